//! Compute backends. `cpu` is the f32 reference.

pub mod cpu;
pub mod cuda;
