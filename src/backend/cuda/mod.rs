//! The CUDA backend plumbing: device selection (a real GPU, or the CPU emulation in CI), the
//! embedded kernel modules, cuBLASLt bf16 GEMMs, and one launcher function per kernel.
//!
//! Everything here goes through cudarc. Without a GPU, the CPU emulation built by `build.rs`
//! (a stand-in `libcuda.so`/`libcublasLt.so` running the same kernel sources compiled for the
//! host) is loaded in place of the driver, so the same launch code runs in CI.

pub mod act;
pub mod attention;
pub mod backend;
pub mod device;
pub mod gemm;
pub mod halting;
pub mod kernels;
pub mod libraries;
pub mod module;
pub mod nccl;

pub use backend::{Cuda, CudaParam};
pub use device::{CudaDevice, DeviceKind};
pub use gemm::{Gemm, Ld};
