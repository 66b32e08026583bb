//! The parameter set (official tensor names, initialization) and checkpoint I/O.

pub mod checkpoint;
pub mod memory;
pub mod params;

pub use params::{
    HostParams, LayerParams, ParamSet, TensorKind, TensorSpec, dense_specs, scatter_puzzle_rows, tensor_specs,
};
