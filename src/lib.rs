//! HRM: the Hierarchical Reasoning Model with an f32 CPU reference backend and CUDA kernels.

pub mod act;
pub mod analysis;
pub mod arc;
pub mod backend;
pub mod commands;
pub mod config;
pub mod dataset;
pub mod envvars;
pub mod fsutil;
pub mod grid;
pub mod hrm;
pub mod infer;
pub mod maze;
pub mod model;
pub mod optim;
pub mod rng;
pub mod sudoku;
pub mod task;
pub mod train;

/// Keep freed activation buffers in the heap instead of returning them to the OS: glibc serves
/// allocations above its (dynamic) mmap threshold with fresh mappings, so every step's
/// multi-megabyte buffers page-faulted in again (tens of millions of minor faults per demo run).
/// Call once at start-up; a no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before other threads start.
    unsafe {
        const MAX_MMAP_THRESHOLD: libc::c_int = 32 << 20; // glibc's ceiling on 64-bit
        libc::mallopt(libc::M_MMAP_THRESHOLD, MAX_MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}
