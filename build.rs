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
//!
//! Toolkits: by default the kernels are built with CUDA 13.0 (nvcc), which needs driver 580
//! or newer. `HRM_CUDA_TOOLKIT=12` builds them with the CUDA 12.8 toolchain that
//! `scripts/setup-cuda --cuda 12` puts in `.venv-cuda12/cuda` (driver >= 570). PyPI has no CUDA
//! 12 nvcc front end, so that build compiles with NVRTC 12.8 (CUDA C++ -> PTX) and ptxas 12.8
//! (PTX -> cubin). The toolkit's version is recorded for the binary (`HRM_KERNEL_TOOLKIT`,
//! the minimum driver follows from it). When the CUDA 12.8 tree exists and the kernels are
//! built with 13.0, every kernel is also compiled with 12.8 for its `ptxas -v` table only
//! (`RESOURCES_CUDA12`), so CI checks both toolkits; `HRM_REQUIRE_CUDA12=1` makes a missing
//! tree an error.

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
    for v in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "HRM_REQUIRE_NVCC",
        "HRM_NO_EMU",
        "CXX",
        "HRM_CUDA_TOOLKIT",
        "HRM_REQUIRE_CUDA12",
    ] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    for venv in [".venv-cuda", ".venv-cuda12"] {
        let pins = manifest.join(venv).join(".hrm-pins");
        if pins.exists() {
            // a (re)installed toolchain rebuilds the kernels
            println!("cargo:rerun-if-changed={}", pins.display());
        }
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

    let cuda12_tree = manifest.join(".venv-cuda12/cuda");
    let want_cuda12 = env::var("HRM_CUDA_TOOLKIT").is_ok_and(|v| v.trim() == "12");
    if (want_cuda12 || env::var("HRM_REQUIRE_CUDA12").is_ok_and(|v| v == "1")) && !cuda12_tree.is_dir() {
        panic!(
            "the CUDA 12.8 toolchain ({}) is missing: run `bash scripts/setup-cuda --cuda 12`",
            cuda12_tree.display()
        );
    }
    let toolkit = if want_cuda12 {
        Toolkit::nvrtc(&cuda12_tree)
    } else {
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
        Toolkit::nvcc(nvcc)
    };
    let cuda_root = toolkit.root.clone();
    println!("cargo:rustc-env=HRM_KERNEL_TOOLKIT={}", toolkit.version);

    // PTX (sm_90) and cubin (sm_90a) per file, in parallel.
    let kdir = out.join("kernels");
    fs::create_dir_all(&kdir).unwrap();
    let results = compile_all(&toolkit, &sources, &kdir);
    // The other toolkit's resource table (CI checks spills with both).
    let cuda12_results = if !want_cuda12 && cuda12_tree.is_dir() {
        let dir = out.join("kernels-cuda12");
        fs::create_dir_all(&dir).unwrap();
        Some(compile_all(&Toolkit::nvrtc(&cuda12_tree), &sources, &dir))
    } else {
        None
    };

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
    code.push_str(
        "/// `ptxas -v` of every kernel compiled with CUDA 12.8 (a check only; empty when the \
         kernels are built with 12.8 or `.venv-cuda12` is absent).\npub const RESOURCES_CUDA12: &[KernelResources] = &[\n",
    );
    for (stem, ptxas) in cuda12_results.iter().flatten() {
        for r in parse_ptxas(ptxas) {
            if r.spill_st + r.spill_ld > 0 {
                println!(
                    "cargo:warning=kernel {} spills registers with CUDA 12.8 ({} B stores, {} B loads)",
                    r.name, r.spill_st, r.spill_ld
                );
            }
            writeln!(
                code,
                "    KernelResources {{ kernel: {:?}, file: {stem:?}, registers: {}, shared_bytes: {}, stack_bytes: {}, spill_store_bytes: {}, spill_load_bytes: {} }},",
                r.name, r.regs, r.smem, r.stack, r.spill_st, r.spill_ld
            )
            .unwrap();
        }
    }
    code.push_str("];\n");
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
        "pub const MODULES: &[KernelModule] = &[];\npub const RESOURCES: &[KernelResources] = &[];\npub const PTXAS_REPORT: &str = \"\";\npub const RESOURCES_CUDA12: &[KernelResources] = &[];\n",
    )
    .unwrap();
}

/// A CUDA toolchain that compiles the kernels: nvcc, or NVRTC + ptxas (the CUDA 12 tree).
struct Toolkit {
    /// CUDA_HOME-like root: `include/` for the emulation's headers, `bin/ptxas`.
    root: PathBuf,
    /// "13.0", "12.8": from `nvcc --version` / `ptxas --version`.
    version: String,
    nvcc: Option<PathBuf>,
}

impl Toolkit {
    fn nvcc(nvcc: PathBuf) -> Toolkit {
        let root = nvcc.parent().and_then(Path::parent).unwrap().to_path_buf();
        let version = release_of(&run(Command::new(&nvcc).arg("--version")));
        Toolkit { root, version, nvcc: Some(nvcc) }
    }

    fn nvrtc(root: &Path) -> Toolkit {
        let version = release_of(&run(Command::new(root.join("bin/ptxas")).arg("--version")));
        Toolkit { root: root.to_path_buf(), version, nvcc: None }
    }
}

/// "13.0" from "Cuda compilation tools, release 13.0, V13.0.88".
fn release_of(version_text: &str) -> String {
    version_text
        .split("release ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or("unknown")
        .trim()
        .to_string()
}

/// Compiles every source in parallel; returns (file stem, ptxas -v output) per source.
fn compile_all(toolkit: &Toolkit, sources: &[PathBuf], kdir: &Path) -> Vec<(String, String)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = sources
            .iter()
            .map(|src| {
                s.spawn(move || match &toolkit.nvcc {
                    Some(nvcc) => compile_cuda(nvcc, src, kdir),
                    None => compile_nvrtc(&toolkit.root, src, kdir),
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// NVRTC (from `root/lib`) then ptxas: PTX for sm_90, and a cubin for sm_90a through PTX for
/// compute_90a, like `compile_cuda`'s two nvcc calls. Returns (file stem, ptxas -v output).
fn compile_nvrtc(root: &Path, src: &Path, kdir: &Path) -> (String, String) {
    let stem = src.file_stem().unwrap().to_string_lossy().to_string();
    let include = |d: &Path| format!("-I{}", d.display());
    let kernels = src.parent().unwrap();
    let options = |arch: &str| {
        vec![
            "--std=c++17".to_string(),
            format!("-arch={arch}"),
            "-lineinfo".into(),
            // nvcc treats unannotated constexpr helpers as host+device; NVRTC needs this
            "-default-device".into(),
            include(kernels),
            include(&root.join("include")),
        ]
    };
    let ptx = nvrtc_ptx(root, src, &options("compute_90"));
    fs::write(kdir.join(format!("{stem}.ptx")), &ptx).unwrap();
    let ptx_90a = kdir.join(format!("{stem}.compute_90a.ptx"));
    fs::write(&ptx_90a, nvrtc_ptx(root, src, &options("compute_90a"))).unwrap();
    let ptxas = run(Command::new(root.join("bin/ptxas"))
        .args(["-arch=sm_90a", "-O3", "-lineinfo", "-v", "-o"])
        .arg(kdir.join(format!("{stem}.sm_90a.cubin")))
        .arg(&ptx_90a));
    (stem, ptxas)
}

/// One NVRTC compilation to PTX text; panics with NVRTC's log on failure.
fn nvrtc_ptx(root: &Path, src: &Path, options: &[String]) -> String {
    use std::ffi::{CString, c_char, c_int, c_void};
    type Program = *mut c_void;
    let lib_path = root.join("lib/libnvrtc.so.12");
    // SAFETY: NVRTC from the pinned CUDA 12.8 wheels; the signatures below are nvrtc.h's.
    unsafe {
        let lib = libloading::Library::new(&lib_path)
            .unwrap_or_else(|e| panic!("cannot load {}: {e}", lib_path.display()));
        let create: libloading::Symbol<
            unsafe extern "C" fn(
                *mut Program,
                *const c_char,
                *const c_char,
                c_int,
                *const *const c_char,
                *const *const c_char,
            ) -> c_int,
        > = lib.get(b"nvrtcCreateProgram\0").unwrap();
        let compile: libloading::Symbol<unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int> =
            lib.get(b"nvrtcCompileProgram\0").unwrap();
        let size_of: libloading::Symbol<unsafe extern "C" fn(Program, *mut usize) -> c_int> =
            lib.get(b"nvrtcGetProgramLogSize\0").unwrap();
        let log_of: libloading::Symbol<unsafe extern "C" fn(Program, *mut c_char) -> c_int> =
            lib.get(b"nvrtcGetProgramLog\0").unwrap();
        let ptx_size: libloading::Symbol<unsafe extern "C" fn(Program, *mut usize) -> c_int> =
            lib.get(b"nvrtcGetPTXSize\0").unwrap();
        let ptx_of: libloading::Symbol<unsafe extern "C" fn(Program, *mut c_char) -> c_int> =
            lib.get(b"nvrtcGetPTX\0").unwrap();
        let destroy: libloading::Symbol<unsafe extern "C" fn(*mut Program) -> c_int> =
            lib.get(b"nvrtcDestroyProgram\0").unwrap();
        let text = CString::new(fs::read(src).unwrap()).unwrap();
        let name = CString::new(src.display().to_string()).unwrap();
        let mut prog: Program = std::ptr::null_mut();
        assert_eq!(create(&mut prog, text.as_ptr(), name.as_ptr(), 0, std::ptr::null(), std::ptr::null()), 0);
        let opts: Vec<CString> = options.iter().map(|o| CString::new(o.as_str()).unwrap()).collect();
        let opt_ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
        let status = compile(prog, opt_ptrs.len() as c_int, opt_ptrs.as_ptr());
        if status != 0 {
            let mut n = 0usize;
            size_of(prog, &mut n);
            let mut log = vec![0u8; n.max(1)];
            log_of(prog, log.as_mut_ptr() as *mut c_char);
            panic!("NVRTC failed on {} ({options:?}):\n{}", src.display(), String::from_utf8_lossy(&log));
        }
        let mut n = 0usize;
        ptx_size(prog, &mut n);
        let mut ptx = vec![0u8; n];
        ptx_of(prog, ptx.as_mut_ptr() as *mut c_char);
        destroy(&mut prog);
        let end = ptx.iter().position(|&b| b == 0).unwrap_or(ptx.len());
        String::from_utf8_lossy(&ptx[..end]).into_owned()
    }
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
