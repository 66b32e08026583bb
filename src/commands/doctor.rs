//! `hrm doctor`: what this machine offers and what the binary will do with it, in one report
//! (text, or JSON with `--json`): the NVIDIA driver and the CUDA version it supports, each GPU,
//! the toolkit the kernels were built with, cuBLASLt and NCCL (where found, or where looked
//! for), the CPU features the CPU backend uses, and what `--device auto` picks and why.
//! Nothing here panics on a machine without the driver.

use crate::backend::cuda::{device, libraries, module};
use anyhow::Result;
use serde::Serialize;

#[derive(clap::Args, Debug, Clone)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct DoctorReport {
    pub driver: DriverReport,
    pub gpus: Vec<device::GpuInfo>,
    /// Why the GPUs could not be listed (`None`: listed, possibly none).
    pub gpus_error: Option<String>,
    pub kernels: KernelsReport,
    pub cublaslt: LibraryReport,
    pub nccl: LibraryReport,
    pub emulation: EmulationReport,
    pub cpu: CpuReport,
    pub auto: AutoReport,
}

#[derive(Clone, Debug, Serialize)]
pub struct DriverReport {
    /// `libcuda.so.1` loads.
    pub found: bool,
    /// The kernel module's version from /proc/driver/nvidia/version ("580.65.06").
    pub version: Option<String>,
    /// The CUDA version the driver supports ("13.0"), from cuDriverGetVersion.
    pub cuda_version: Option<String>,
    /// Too old for the kernels (the message `--device cuda` would give).
    pub problem: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct KernelsReport {
    /// The crate was built with the CUDA kernels.
    pub built: bool,
    /// The toolkit they were built with ("13.0").
    pub toolkit: Option<String>,
    pub architectures: String,
    /// The oldest driver CUDA version that loads them, and its Linux driver branch.
    pub minimum_driver_cuda_version: Option<String>,
    pub minimum_linux_driver: Option<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LibraryReport {
    /// The file looked for.
    pub file: String,
    pub path: Option<String>,
    pub version: Option<String>,
    /// Where it was looked for (when not found, or always in JSON).
    pub looked_in: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct EmulationReport {
    pub built: bool,
    pub directory: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuReport {
    pub avx2: bool,
    pub fma: bool,
    /// AVX-512 F, BW, DQ and VL together (what the AVX-512 kernels need).
    pub avx512: bool,
    /// Which kernels the CPU backend runs.
    pub kernels: String,
    pub threads: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct AutoReport {
    /// "cuda" or "cpu".
    pub choice: String,
    pub reason: String,
}

fn driver_report() -> DriverReport {
    let probe = device::probe_driver();
    let version = std::fs::read_to_string("/proc/driver/nvidia/version").ok().and_then(|text| {
        let line = text.lines().next()?.to_string();
        line.split_whitespace()
            .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()) && w.contains('.'))
            .map(String::from)
    });
    let cuda = probe.as_ref().and_then(|p| p.cuda_version);
    let problem = match (cuda, module::minimum_driver_cuda_version()) {
        (Some(found), Some(minimum)) if found < minimum => {
            Some(device::driver_too_old_message(found, minimum))
        }
        _ => None,
    };
    DriverReport {
        found: probe.is_some(),
        version,
        cuda_version: cuda.map(module::format_cuda_version),
        problem,
    }
}

fn cpu_report() -> CpuReport {
    use crate::backend::cpu::simd;
    #[cfg(target_arch = "x86_64")]
    let (avx2, fma) =
        (std::arch::is_x86_feature_detected!("avx2"), std::arch::is_x86_feature_detected!("fma"));
    #[cfg(not(target_arch = "x86_64"))]
    let (avx2, fma) = (false, false);
    let kernels = if simd::has_avx512() {
        "AVX-512 (F/BW/DQ/VL + FMA)"
    } else if simd::has_avx2_fma() {
        "AVX2 + FMA"
    } else {
        "portable (no AVX2/FMA)"
    };
    CpuReport {
        avx2,
        fma,
        avx512: simd::has_avx512(),
        kernels: kernels.into(),
        threads: rayon::current_num_threads(),
    }
}

/// cuBLASLt as a GPU run finds it: the library this process loaded, or the search a GPU run
/// would make (the file is loaded to read its version).
fn cublaslt_report() -> LibraryReport {
    let search = libraries::search_cublaslt(device::DeviceKind::Gpu);
    let (path, version) = match libraries::loaded_cublaslt() {
        Some(loaded) => (Some(loaded.path.clone()), libraries::cublaslt_version(&loaded.library)),
        None => match &search.found {
            // SAFETY: cuBLASLt's initialisers make no driver call.
            Some(p) => (
                Some(p.clone()),
                unsafe { libloading::Library::new(p) }.ok().and_then(|l| libraries::cublaslt_version(&l)),
            ),
            None => (None, None),
        },
    };
    LibraryReport {
        file: search.file,
        path: path.map(|p| p.display().to_string()),
        version: version.map(libraries::format_cublas_version),
        looked_in: search.looked_in,
    }
}

fn nccl_report() -> LibraryReport {
    let search = libraries::search_nccl();
    let version = search.found.as_ref().and_then(|p| {
        // SAFETY: NCCL's initialisers make no driver call; `ncclResult_t ncclGetVersion(int*)`.
        unsafe {
            let lib = libloading::Library::new(p).ok()?;
            let f: libloading::Symbol<unsafe extern "C" fn(*mut i32) -> i32> =
                lib.get(b"ncclGetVersion\0").ok()?;
            let mut v = 0;
            (f(&mut v) == 0).then(|| format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100))
        }
    });
    LibraryReport {
        file: search.file,
        path: search.found.map(|p| p.display().to_string()),
        version,
        looked_in: search.looked_in,
    }
}

/// Gathers the report. `--device auto`'s choice is made first, exactly as a run makes it, so
/// the libraries loaded afterwards for their versions cannot change it.
pub fn doctor_report() -> DoctorReport {
    let (choice, reason) = crate::backend::auto_choice();
    let (gpus, gpus_error) = match device::gpu_inventory() {
        Ok(g) => (g, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    DoctorReport {
        driver: driver_report(),
        gpus,
        gpus_error,
        kernels: KernelsReport {
            built: module::HAS_KERNELS,
            toolkit: module::TOOLKIT.map(String::from),
            architectures: module::ARCHITECTURES.into(),
            minimum_driver_cuda_version: module::minimum_driver_cuda_version()
                .map(module::format_cuda_version),
            minimum_linux_driver: module::minimum_driver_cuda_version().and_then(module::linux_driver_for),
        },
        cublaslt: cublaslt_report(),
        nccl: nccl_report(),
        emulation: EmulationReport {
            built: device::emulation_dir().is_some(),
            directory: device::emulation_dir().map(String::from),
        },
        cpu: cpu_report(),
        auto: AutoReport { choice: choice.into(), reason },
    }
}

fn gib(bytes: u64) -> String {
    format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
}

fn library_line(l: &LibraryReport) -> String {
    match &l.path {
        Some(p) => format!("{} {} at {p}", l.file, l.version.as_deref().unwrap_or("(version unknown)")),
        None => format!("{} not found; looked in: {}", l.file, l.looked_in.join(", ")),
    }
}

/// The report as text, one subject per line.
pub fn render_text(r: &DoctorReport) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    let driver = if !r.driver.found {
        "not found (no libcuda.so.1)".to_string()
    } else {
        format!(
            "{}supports CUDA {}{}",
            r.driver.version.as_ref().map_or(String::new(), |v| format!("{v}, ")),
            r.driver.cuda_version.as_deref().unwrap_or("?"),
            r.driver.problem.as_ref().map_or(String::new(), |p| format!(" -- TOO OLD: {p}")),
        )
    };
    lines.push(("NVIDIA driver".into(), driver));
    let gpus = if let Some(e) = &r.gpus_error {
        format!("cannot be listed: {e}")
    } else if r.gpus.is_empty() {
        "none".into()
    } else {
        r.gpus
            .iter()
            .map(|g| {
                format!(
                    "{}: {}, compute capability {}, {} total, {} free",
                    g.ordinal,
                    g.name,
                    g.compute_capability,
                    gib(g.memory_total_bytes),
                    g.memory_free_bytes.map_or("?".into(), gib)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    lines.push(("GPUs".into(), gpus));
    let k = &r.kernels;
    let kernels = if !k.built {
        "not built (no nvcc at build time: run `bash scripts/setup-cuda` and rebuild)".to_string()
    } else {
        format!(
            "built with CUDA {}: {}; need a driver for CUDA {} or newer (Linux driver >= {})",
            k.toolkit.as_deref().unwrap_or("?"),
            k.architectures,
            k.minimum_driver_cuda_version.as_deref().unwrap_or("?"),
            k.minimum_linux_driver.map_or("?".into(), |b| b.to_string()),
        )
    };
    lines.push(("CUDA kernels".into(), kernels));
    lines.push(("cuBLASLt".into(), library_line(&r.cublaslt)));
    lines.push(("NCCL".into(), library_line(&r.nccl) + " (only for --nproc > 1)"));
    let emulation = match &r.emulation.directory {
        Some(d) => {
            format!("built ({d}): available with --device emu, for testing; never picked by --device auto")
        }
        None => "not built".into(),
    };
    lines.push(("CPU emulation".into(), emulation));
    let c = &r.cpu;
    let yes = |b: bool| if b { "yes" } else { "no" };
    lines.push((
        "CPU".into(),
        format!(
            "AVX2 {}, FMA {}, AVX-512 {}: the CPU backend runs its {} kernels on {} threads",
            yes(c.avx2),
            yes(c.fma),
            yes(c.avx512),
            c.kernels,
            c.threads
        ),
    ));
    lines.push(("--device auto".into(), format!("{}: {}", r.auto.choice, r.auto.reason)));
    let mut out = String::from("hrm doctor: what this machine offers and what hrm will do\n");
    for (what, text) in lines {
        out.push_str(&format!("{what:<15} {text}\n"));
    }
    out
}

/// `hrm doctor [--json]`: prints the report.
pub fn run_doctor(a: &DoctorArgs) -> Result<DoctorReport> {
    let report = doctor_report();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render_text(&report));
    }
    Ok(report)
}
