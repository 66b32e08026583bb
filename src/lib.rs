//! HRM: the Hierarchical Reasoning Model with an f32 CPU reference backend and CUDA kernels.

pub mod act;
pub mod analysis;
pub mod backend;
pub mod commands;
pub mod config;
pub mod hrm;
pub mod infer;
pub mod model;
pub mod optim;
pub mod rng;
pub mod sudoku;
pub mod train;
