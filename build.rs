//! Build script: CUDA kernels and their CPU emulation.
//!
//! 1. Every `kernels/*.cu` is compiled by nvcc to PTX for sm_90 and to a cubin for sm_90a, both
//!    embedded in the crate (`src/backend/cuda/module.rs` includes `OUT_DIR/kernels.rs`). The
//!    cubin compile runs with `-Xptxas -v`; its resource usage (registers, shared memory, stack,
//!    spills) is parsed into a table the crate exposes (`hrm::backend::cuda::module::RESOURCES`)
//!    and is written to `OUT_DIR/ptxas-report.txt`.
//! 2. The CPU emulation (design: a stand-in driver, see emu/driver.cpp): the same `.cu` files
//!    compiled for the host by the C++ compiler (found by the `cc` crate) under
//!    `emu/cuda_emu.h`, linked with the emulation runtime into `OUT_DIR/emu/libcuda.so`, the
//!    cuBLASLt stand-in into `OUT_DIR/emu/libcublasLt.so`, and the NCCL stand-in (data-parallel
//!    training across processes) into `OUT_DIR/emu/libnccl.so.2`.
//!
//! Without nvcc: a warning, and the crate builds without kernels (`cfg(hrm_kernels)` unset; the
//! CPU backend works, kernel tests skip). `HRM_REQUIRE_NVCC=1` (CI) turns that into an error.
//! nvcc is looked up in `$NVCC`, `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, the project venv made by
//! `scripts/setup-cuda` (`.venv-cuda/`), `PATH`, `/usr/local/cuda/bin`.
//! `HRM_NO_EMU=1` skips building the emulation.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(hrm_kernels)");
    println!("cargo::rustc-check-cfg=cfg(hrm_emu)");
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=emu");
    for v in ["NVCC", "CUDA_HOME", "CUDA_PATH", "HRM_REQUIRE_NVCC", "HRM_NO_EMU", "CXX"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let pins = manifest.join(".venv-cuda/.hrm-pins");
    if pins.exists() {
        // a (re)installed toolchain rebuilds the kernels
        println!("cargo:rerun-if-changed={}", pins.display());
    }
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let require = env::var("HRM_REQUIRE_NVCC").is_ok_and(|v| v == "1");

    let mut sources: Vec<PathBuf> = fs::read_dir(manifest.join("kernels"))
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "cu"))
                .collect()
        })
        .unwrap_or_default();
    sources.sort();

    let Some(nvcc) = find_nvcc(&manifest) else {
        let msg = "nvcc not found (run `bash scripts/setup-cuda`): building without CUDA kernels; \
                   the CPU backend works, kernel tests skip";
        if require {
            panic!("HRM_REQUIRE_NVCC=1 but {msg}");
        }
        println!("cargo:warning={msg}");
        write_empty(&out);
        return;
    };
    let cuda_root = nvcc.parent().and_then(Path::parent).unwrap().to_path_buf();

    // nvcc: PTX (sm_90) and cubin (sm_90a) per file, in parallel.
    let kdir = out.join("kernels");
    fs::create_dir_all(&kdir).unwrap();
    let results: Vec<(String, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|src| {
                let nvcc = &nvcc;
                let kdir = &kdir;
                s.spawn(move || compile_cuda(nvcc, src, kdir))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut report = String::from(
        "kernel                              file        regs  smem(B)  stack(B)  spill st/ld(B)\n",
    );
    let mut code = String::new();
    code.push_str("/// Every kernel file: PTX for sm_90 and a cubin for sm_90a.\n");
    code.push_str("pub const MODULES: &[KernelModule] = &[\n");
    let mut res_rows = String::new();
    for (src, (stem, ptxas)) in sources.iter().zip(&results) {
        let _ = src;
        writeln!(
            code,
            "    KernelModule {{ name: {stem:?}, ptx: include_str!(concat!(env!(\"OUT_DIR\"), \"/kernels/{stem}.ptx\")), cubin_sm90a: include_bytes!(concat!(env!(\"OUT_DIR\"), \"/kernels/{stem}.sm_90a.cubin\")) }},"
        )
        .unwrap();
        for r in parse_ptxas(ptxas) {
            writeln!(
                report,
                "{:<35} {:<10} {:>5} {:>8} {:>9} {:>7}/{}",
                r.name, stem, r.regs, r.smem, r.stack, r.spill_st, r.spill_ld
            )
            .unwrap();
            if r.spill_st + r.spill_ld > 0 {
                println!(
                    "cargo:warning=kernel {} spills registers ({} B stores, {} B loads)",
                    r.name, r.spill_st, r.spill_ld
                );
            }
            writeln!(
                res_rows,
                "    KernelResources {{ kernel: {:?}, file: {stem:?}, registers: {}, shared_bytes: {}, stack_bytes: {}, spill_store_bytes: {}, spill_load_bytes: {} }},",
                r.name, r.regs, r.smem, r.stack, r.spill_st, r.spill_ld
            )
            .unwrap();
        }
    }
    code.push_str("];\n");
    code.push_str("/// `ptxas -v` resource usage of every kernel (sm_90a cubins).\n");
    code.push_str("pub const RESOURCES: &[KernelResources] = &[\n");
    code.push_str(&res_rows);
    code.push_str("];\n");
    writeln!(code, "/// The same table as text.\npub const PTXAS_REPORT: &str = {report:?};").unwrap();
    fs::write(out.join("kernels.rs"), code).unwrap();
    fs::write(out.join("ptxas-report.txt"), &report).unwrap();
    println!("cargo:rustc-cfg=hrm_kernels");

    // CPU emulation.
    if env::var("HRM_NO_EMU").is_ok_and(|v| v == "1") {
        return;
    }
    match build_emulation(&manifest, &out, &cuda_root, &sources) {
        Ok(dir) => {
            println!("cargo:rustc-cfg=hrm_emu");
            println!("cargo:rustc-env=HRM_EMU_DIR={}", dir.display());
            println!("cargo:rustc-env=HRM_EMU_RACE_DIR={}", out.join("emu-race").display());
        }
        Err(e) => {
            if require {
                panic!("building the CPU emulation failed: {e}");
            }
            println!("cargo:warning=CPU emulation of the kernels not built:");
            for line in e.lines().take(30) {
                println!("cargo:warning={line}");
            }
        }
    }
}

fn write_empty(out: &Path) {
    fs::write(
        out.join("kernels.rs"),
        "pub const MODULES: &[KernelModule] = &[];\npub const RESOURCES: &[KernelResources] = &[];\npub const PTXAS_REPORT: &str = \"\";\n",
    )
    .unwrap();
}

fn find_nvcc(manifest: &Path) -> Option<PathBuf> {
    let mut cands: Vec<PathBuf> = Vec::new();
    if let Ok(p) = env::var("NVCC") {
        cands.push(p.into());
    }
    for v in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(p) = env::var(v) {
            cands.push(Path::new(&p).join("bin/nvcc"));
        }
    }
    if let Ok(rd) = fs::read_dir(manifest.join(".venv-cuda/lib")) {
        for e in rd.flatten() {
            cands.push(e.path().join("site-packages/nvidia/cu13/bin/nvcc"));
        }
    }
    if let Ok(path) = env::var("PATH") {
        for d in env::split_paths(&path) {
            cands.push(d.join("nvcc"));
        }
    }
    cands.push("/usr/local/cuda/bin/nvcc".into());
    // nvcc must be called by its real path (through a symlink it cannot find cicc).
    cands.into_iter().find(|p| p.is_file()).and_then(|p| p.canonicalize().ok())
}

fn run(cmd: &mut Command) -> String {
    let o = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    if !o.status.success() {
        panic!("{cmd:?} failed:\n{text}");
    }
    text
}

/// Returns (file stem, ptxas -v output).
fn compile_cuda(nvcc: &Path, src: &Path, kdir: &Path) -> (String, String) {
    let stem = src.file_stem().unwrap().to_string_lossy().to_string();
    let common = ["-std=c++17", "-O3", "-lineinfo", "-Xcompiler", "-Wall"];
    run(Command::new(nvcc)
        .args(common)
        .args(["-ptx", "-arch=sm_90", "-o"])
        .arg(kdir.join(format!("{stem}.ptx")))
        .arg(src));
    let ptxas = run(Command::new(nvcc)
        .args(common)
        .args(["-cubin", "-gencode=arch=compute_90a,code=sm_90a", "-Xptxas", "-v", "-o"])
        .arg(kdir.join(format!("{stem}.sm_90a.cubin")))
        .arg(src));
    (stem, ptxas)
}

struct Res {
    name: String,
    regs: u32,
    smem: u32,
    stack: u32,
    spill_st: u32,
    spill_ld: u32,
}

fn num_before(s: &str, suffix: &str) -> Option<u32> {
    let i = s.find(suffix)?;
    s[..i].split_whitespace().last()?.parse().ok()
}

fn parse_ptxas(text: &str) -> Vec<Res> {
    let mut out: Vec<Res> = Vec::new();
    for line in text.lines() {
        if let Some(i) = line.find("Compiling entry function '") {
            let rest = &line[i + "Compiling entry function '".len()..];
            let name = rest.split('\'').next().unwrap_or("").to_string();
            out.push(Res { name, regs: 0, smem: 0, stack: 0, spill_st: 0, spill_ld: 0 });
        } else if let Some(r) = out.last_mut() {
            if line.contains("bytes stack frame") {
                r.stack = num_before(line, "bytes stack frame").unwrap_or(0);
                r.spill_st = num_before(line, "bytes spill stores").unwrap_or(0);
                r.spill_ld = num_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used") && line.contains("registers") {
                r.regs = num_before(line, "registers").unwrap_or(0);
                r.smem = num_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}

fn build_emulation(
    manifest: &Path,
    out: &Path,
    cuda_root: &Path,
    sources: &[PathBuf],
) -> Result<PathBuf, String> {
    let dir = out.join("emu");
    fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let compiler =
        cc::Build::new().cpp(true).cargo_metadata(false).try_get_compiler().map_err(|e| e.to_string())?;
    let inc = cuda_root.join("include");
    let emu = manifest.join("emu");
    let base = |c: &mut Command| {
        c.args(["-std=c++20", "-O2", "-g1", "-fPIC", "-Wall", "-Wno-unused-function"])
            .arg("-I")
            .arg(&inc)
            .arg("-I")
            .arg(inc.join("cccl"))
            .arg("-I")
            .arg(&emu)
            .arg("-I")
            .arg(manifest.join("kernels"));
    };
    // kernels first (force-including the emulation header), then the runtime and driver; the
    // kernels once more with GCC's ThreadSanitizer instrumentation for the race-checking build
    // (every memory access calls __tsan_readN/__tsan_writeN, which emu/racecheck.cpp provides).
    let race_dir = out.join("emu-race");
    fs::create_dir_all(&race_dir).map_err(|e| e.to_string())?;
    let mut jobs: Vec<(PathBuf, PathBuf, bool)> = Vec::new();
    let mut race_jobs: Vec<(PathBuf, PathBuf, bool)> = Vec::new();
    for s in sources {
        let stem = s.file_stem().unwrap().to_string_lossy();
        jobs.push((s.clone(), dir.join(format!("k_{stem}.o")), true));
        race_jobs.push((s.clone(), race_dir.join(format!("k_{stem}.o")), true));
    }
    for f in ["runtime.cpp", "driver.cpp", "cublaslt.cpp", "nccl.cpp"] {
        jobs.push((emu.join(f), dir.join(f.replace(".cpp", ".o")), false));
    }
    jobs.push((emu.join("racecheck.cpp"), race_dir.join("racecheck.o"), false));
    let n_plain = jobs.len();
    jobs.extend(race_jobs);
    let errors: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = jobs
            .iter()
            .enumerate()
            .map(|(i, (src, obj, is_kernel))| {
                let compiler = &compiler;
                let emu = &emu;
                s.spawn(move || {
                    let mut c = compiler.to_command();
                    base(&mut c);
                    if *is_kernel {
                        c.arg("-include").arg(emu.join("cuda_emu.h")).args([
                            "-x",
                            "c++",
                            "-Wno-unknown-pragmas",
                        ]);
                    }
                    if i >= n_plain {
                        c.args(["-fsanitize=thread", "--param", "tsan-instrument-func-entry-exit=0"]);
                    }
                    c.arg("-c").arg(src).arg("-o").arg(obj);
                    match c.output() {
                        Ok(o) if o.status.success() => None,
                        Ok(o) => Some(format!("{}: {}", src.display(), String::from_utf8_lossy(&o.stderr))),
                        Err(e) => Some(format!("{}: {e}", src.display())),
                    }
                })
            })
            .collect();
        hs.into_iter().filter_map(|h| h.join().unwrap()).collect()
    });
    if !errors.is_empty() {
        return Err(errors.join("\n"));
    }
    check_shared_section(&jobs[..n_plain])?;
    let link = |objs: &[PathBuf], soname: &str, file: &str, extra: &[&str]| -> Result<(), String> {
        let mut c = compiler.to_command();
        c.arg("-shared")
            .arg(format!("-Wl,-soname,{soname}"))
            .arg("-o")
            .arg(dir.join(file))
            .args(objs)
            .args(extra)
            .arg("-ldl")
            .arg("-lpthread");
        let o = c.output().map_err(|e| e.to_string())?;
        if !o.status.success() {
            return Err(String::from_utf8_lossy(&o.stderr).to_string());
        }
        Ok(())
    };
    let driver_objs: Vec<PathBuf> = jobs[..n_plain]
        .iter()
        .filter(|(s, _, _)| {
            !s.ends_with("cublaslt.cpp") && !s.ends_with("nccl.cpp") && !s.ends_with("racecheck.cpp")
        })
        .map(|(_, o, _)| o.clone())
        .collect();
    link(&driver_objs, "libcuda.so", "libcuda.so", &[])?;
    // The race-checking driver: instrumented kernels, the same runtime and driver, the checker.
    // `-z defs`: every __tsan_* entry point the instrumentation calls must be in racecheck.cpp.
    let mut race_objs: Vec<PathBuf> = jobs[n_plain..].iter().map(|(_, o, _)| o.clone()).collect();
    race_objs.extend([dir.join("runtime.o"), dir.join("driver.o"), race_dir.join("racecheck.o")]);
    let race_lib = race_dir.join("libcuda.so");
    link(&race_objs, "libcuda.so", "../emu-race/libcuda.so", &["-Wl,-z,defs"])?;
    if !race_lib.exists() {
        return Err("the race-checking emulation was not linked".into());
    }
    link(&[dir.join("cublaslt.o")], "libcublasLt.so", "libcublasLt.so", &[])?;
    // The NCCL stand-in (emu/nccl.cpp): named like the wheel's libnccl.so.2, with the SONAME
    // that cudarc's loader asks for first, and linked to the stand-in driver (whose allocation
    // table checks the buffers).
    let dir_s = dir.display().to_string();
    link(
        &[dir.join("nccl.o")],
        "libnccl.so",
        "libnccl.so.2",
        &["-L", &dir_s, "-l:libcuda.so", "-Wl,-rpath,$ORIGIN"],
    )?;
    Ok(dir)
}

/// Every `__shared__` variable of the host-compiled kernels must be in the `hrm_emu_smem`
/// section, where the emulation re-poisons it before every block and checks it for races. GCC
/// ignores the section attribute on a function-local static of a template, so such a variable
/// (a function-local static object: `_ZZ...`) elsewhere is refused here, naming it: declare it in
/// the extern "C" kernel and pass it in.
fn check_shared_section(jobs: &[(PathBuf, PathBuf, bool)]) -> Result<(), String> {
    let mut stray = Vec::new();
    for (src, obj, is_kernel) in jobs {
        if !*is_kernel {
            continue;
        }
        let Ok(out) = Command::new("objdump").arg("-t").arg("-C").arg(obj).output() else {
            println!("cargo:warning=objdump not found: the shared-memory section check is skipped");
            return Ok(());
        };
        let raw = Command::new("objdump").arg("-t").arg(obj).output().map_err(|e| e.to_string())?;
        let (text, raw) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&raw.stdout));
        for (line, raw_line) in text.lines().zip(raw.lines()) {
            let local_static = raw_line.contains(" _ZZ") && raw_line.split_whitespace().nth(2) == Some("O");
            if local_static && !raw_line.contains("hrm_emu_smem") {
                stray.push(format!("{}: {}", src.display(), line.split_whitespace().last().unwrap_or(line)));
            }
        }
    }
    if stray.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "function-local statics outside the emulation's shared-memory section (a __shared__ \
             variable in a template? declare it in the extern \"C\" kernel and pass it in):\n{}",
            stray.join("\n")
        ))
    }
}
