//! Finding the CUDA runtime libraries the binary loads at run time (cuBLASLt; NCCL for reports)
//! on a machine that may have nothing but the NVIDIA driver.
//!
//! cudarc opens cuBLASLt with a plain `dlopen` of a few names (`libcublasLt.so`, ...,
//! `libcublasLt.so.13`, `.so.12`, ...), so it only sees what the dynamic loader's path holds.
//! We look in more places and load the library we find by its full path first: the loader then
//! matches cudarc's `dlopen("libcublasLt.so.13")` to it by SONAME (the wheels' libraries carry
//! exactly that SONAME), the same trick that puts the emulation's stand-ins under cudarc.
//!
//! Where we look, in order: `HRM_CUDA_LIB_DIR` (directories separated by `:`); the project's
//! `.venv-cuda` made by `scripts/setup-cuda` (found from the source tree this binary was built
//! in, and relative to the executable, `target/release/hrm`); `LD_LIBRARY_PATH`; the usual
//! system directories; the `nvidia/*/lib` folders of Python installs (a PyTorch install brings
//! cuBLASLt along); finally the dynamic loader's own search (`ld.so.cache`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::device::DeviceKind;
use super::module;

/// The outcome of looking for one library.
#[derive(Clone, Debug)]
pub struct LibrarySearch {
    /// The file name looked for (`libcublasLt.so.13`).
    pub file: String,
    /// Where it was found (`None`: nowhere).
    pub found: Option<PathBuf>,
    /// Every place looked in, in order.
    pub looked_in: Vec<String>,
}

impl LibrarySearch {
    /// "not found; looked in: A, B, ..." for error messages.
    pub fn not_found_message(&self) -> String {
        format!("{} not found; looked in: {}", self.file, self.looked_in.join(", "))
    }
}

/// The CUDA major version the kernels were built for (13 by default): it names the cuBLASLt
/// that matches them (a cuBLASLt of another major needs another driver).
pub fn cuda_major() -> u32 {
    module::TOOLKIT.and_then(|t| t.split('.').next()?.parse().ok()).unwrap_or(13)
}

/// Directories of `HRM_CUDA_LIB_DIR`.
fn env_dirs() -> Vec<PathBuf> {
    std::env::var_os("HRM_CUDA_LIB_DIR")
        .map(|v| std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()).collect())
        .unwrap_or_default()
}

/// `nvidia/<sub>/lib` under every `lib/python3*/site-packages` of `prefix` (a venv or a Python
/// install). CUDA 13 wheels put their libraries in `nvidia/cu13/lib`, CUDA 12 ones in
/// `nvidia/cublas/lib`, `nvidia/nccl/lib`.
fn wheel_lib_dirs(prefix: &Path, subs: &[&str]) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for lib in ["lib", "lib64", "local/lib"] {
        let Ok(entries) = std::fs::read_dir(prefix.join(lib)) else { continue };
        let mut pythons: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("python3")))
            .collect();
        pythons.sort();
        for py in pythons {
            for packages in ["site-packages", "dist-packages"] {
                let nvidia = py.join(packages).join("nvidia");
                if nvidia.is_dir() {
                    dirs.extend(subs.iter().map(|sub| nvidia.join(sub).join("lib")));
                }
            }
        }
    }
    dirs
}

/// The project's venv for this build's toolkit (`.venv-cuda`, or `.venv-cuda12`).
fn project_venv_name() -> &'static str {
    if cuda_major() == 12 { ".venv-cuda12" } else { ".venv-cuda" }
}

/// Where the wheels of this build's CUDA major keep a library.
fn wheel_subdirs(library: &str) -> Vec<&'static str> {
    match (cuda_major(), library) {
        (12, "nccl") => vec!["nccl"],
        (12, _) => vec!["cublas"],
        (_, "nccl") => vec!["cu13", "nccl"],
        _ => vec!["cu13"],
    }
}

/// Every directory to look in, in order, with duplicates removed.
fn candidate_dirs(library: &str) -> Vec<PathBuf> {
    let subs = wheel_subdirs(library);
    let mut dirs = env_dirs();
    // The project's venv: where this binary was built, and relative to the executable.
    let venv = project_venv_name();
    dirs.extend(wheel_lib_dirs(&Path::new(env!("CARGO_MANIFEST_DIR")).join(venv), &subs));
    if let Some(exe_dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        dirs.push(exe_dir.clone());
        for up in [exe_dir.join("../.."), exe_dir.join("../../..")] {
            dirs.extend(wheel_lib_dirs(&up.join(venv), &subs));
        }
    }
    if let Some(v) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&v).filter(|p| !p.as_os_str().is_empty()));
    }
    for d in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda/targets/x86_64-linux/lib",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ] {
        dirs.push(d.into());
    }
    // Python installs (PyTorch's CUDA wheels): the one of `python3` on PATH (a venv or conda
    // prefix), the user's, the system's.
    if let Some(path) = std::env::var_os("PATH") {
        for bin in std::env::split_paths(&path) {
            if let Some(prefix) = bin.parent().filter(|_| bin.join("python3").exists()) {
                dirs.extend(wheel_lib_dirs(prefix, &subs));
            }
        }
    }
    if let Some(home) = std::env::var_os("HOME") {
        dirs.extend(wheel_lib_dirs(&Path::new(&home).join(".local"), &subs));
    }
    dirs.extend(wheel_lib_dirs(Path::new("/usr/local"), &subs));
    dirs.extend(wheel_lib_dirs(Path::new("/usr"), &subs));
    // the same directory reached two ways (the executable inside the project) is listed once
    let mut seen = std::collections::HashSet::new();
    dirs.into_iter()
        .map(|d| std::fs::canonicalize(&d).unwrap_or(d))
        .filter(|d| seen.insert(d.clone()))
        .collect()
}

/// Looks for `file` in `dirs` (no loading).
fn search_in(file: &str, dirs: &[PathBuf]) -> LibrarySearch {
    let found = dirs.iter().map(|d| d.join(file)).find(|p| p.is_file());
    LibrarySearch {
        file: file.to_string(),
        found,
        looked_in: dirs.iter().map(|d| d.display().to_string()).collect(),
    }
}

/// Whether cuBLASLt is made absent under the emulation (`HRM_EMU_NO_CUBLASLT=1`, test only).
pub fn emulated_cublaslt_absent() -> bool {
    std::env::var("HRM_EMU_NO_CUBLASLT").is_ok_and(|v| v == "1")
}

/// The cuBLASLt file this build needs (`libcublasLt.so.13`).
pub fn cublaslt_file() -> String {
    format!("libcublasLt.so.{}", cuda_major())
}

/// Where cuBLASLt is, without loading anything. Under the emulation only `HRM_CUDA_LIB_DIR`
/// is searched (a real cuBLASLt must never be loaded next to the stand-in driver), for the
/// stand-in's file name.
pub fn search_cublaslt(kind: DeviceKind) -> LibrarySearch {
    match kind {
        DeviceKind::Gpu => search_in(&cublaslt_file(), &candidate_dirs("cublas")),
        DeviceKind::Emulation => search_in("libcublasLt.so", &env_dirs()),
    }
}

/// Where NCCL is (for reports; `hrm train --nproc` has its own set-up).
pub fn search_nccl() -> LibrarySearch {
    search_in("libnccl.so.2", &candidate_dirs("nccl"))
}

/// The cuBLASLt library this process loaded by full path (kept loaded for the process).
static CUBLASLT: OnceLock<std::result::Result<Option<Loaded>, String>> = OnceLock::new();

/// A library loaded by full path.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub library: libloading::Library,
}

/// Makes sure cudarc's loader will find cuBLASLt: the emulation's stand-in was preloaded with
/// the stand-in driver (unless made absent for a test); on a GPU the search above runs and
/// the library found is loaded by full path. `Ok(None)`: no search was needed (stand-in, or the
/// dynamic loader finds it by name). The error names every place looked in.
pub fn ensure_cublaslt(kind: DeviceKind) -> std::result::Result<Option<&'static Loaded>, String> {
    CUBLASLT
        .get_or_init(|| {
            if kind == DeviceKind::Emulation && !emulated_cublaslt_absent() {
                return Ok(None); // the stand-in is loaded with the stand-in driver
            }
            let search = search_cublaslt(kind);
            if let Some(path) = &search.found {
                // SAFETY: loading cuBLASLt runs its initialisers only; it needs no driver call.
                return match unsafe { libloading::Library::new(path) } {
                    Ok(library) => Ok(Some(Loaded { path: path.clone(), library })),
                    Err(e) => Err(format!("cuBLASLt at {} does not load: {e}", path.display())),
                };
            }
            // The dynamic loader's own path (LD_LIBRARY_PATH, ld.so.cache) under cudarc's names.
            // SAFETY: probing loads and unloads the library by name.
            if kind == DeviceKind::Gpu && unsafe { cudarc::cublaslt::sys::is_culib_present() } {
                return Ok(None);
            }
            Err(format!(
                "cuBLASLt {}, nor by the dynamic loader (ld.so.cache). Install it with `bash \
                 scripts/setup-cuda` (the pinned nvidia-cublas wheel in .venv-cuda), or point \
                 HRM_CUDA_LIB_DIR at a directory holding it; `hrm doctor` shows the search",
                search.not_found_message()
            ))
        })
        .as_ref()
        .map(Option::as_ref)
        .map_err(Clone::clone)
}

/// The cuBLASLt this process loaded by full path, if it did.
pub fn loaded_cublaslt() -> Option<&'static Loaded> {
    CUBLASLT.get()?.as_ref().ok()?.as_ref()
}

/// cuBLASLt's version (`cublasLtGetVersion`, e.g. 130002) of a loaded library.
pub fn cublaslt_version(lib: &libloading::Library) -> Option<usize> {
    // SAFETY: `size_t cublasLtGetVersion(void)` in every cuBLASLt; it needs no driver.
    unsafe {
        let f: libloading::Symbol<unsafe extern "C" fn() -> usize> = lib.get(b"cublasLtGetVersion\0").ok()?;
        Some(f())
    }
}

/// "13.0.2" from 130002 (cuBLAS encodes major * 10000 + minor * 100 + patch).
pub fn format_cublas_version(v: usize) -> String {
    format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_names_every_place_and_finds_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        let full = dir.path().join("full");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::create_dir_all(&full).unwrap();
        let miss = search_in("libcublasLt.so.13", std::slice::from_ref(&empty));
        assert!(miss.found.is_none());
        assert!(miss.not_found_message().contains(&empty.display().to_string()));
        std::fs::write(full.join("libcublasLt.so.13"), b"").unwrap();
        let hit = search_in("libcublasLt.so.13", &[empty.clone(), full.clone()]);
        assert_eq!(hit.found, Some(full.join("libcublasLt.so.13")));
        assert_eq!(hit.looked_in.len(), 2);
    }

    #[test]
    fn wheel_layouts() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("lib/python3.11/site-packages/nvidia/cu13/lib");
        assert!(wheel_lib_dirs(dir.path(), &["cu13"]).is_empty(), "no nvidia/ folder yet");
        std::fs::create_dir_all(&lib).unwrap();
        assert_eq!(wheel_lib_dirs(dir.path(), &["cu13"]), vec![lib]);
        assert_eq!(format_cublas_version(130002), "13.0.2");
    }
}
