//! HRM: the Hierarchical Reasoning Model with an f32 CPU reference backend and CUDA kernels.

pub mod sudoku;
