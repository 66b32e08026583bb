//! The CPU backend: every op of the model in plain f32 (f64 where the reference uses it),
//! multithreaded with rayon, GEMMs through the `gemm` crate. It is the reference the CUDA
//! kernels are validated against; one file per op, forward and backward side by side.

pub mod attention;
pub mod embed;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod optim;
pub mod rope;
pub mod swiglu;
