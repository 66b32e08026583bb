//! The CLI's commands as library functions and clap argument structs (`main.rs` only
//! dispatches), so tests run exactly the code paths users run.

pub mod analyze;
pub mod args;
pub mod bench;
pub mod demo_maze;
pub mod doctor;
pub mod eval;
pub mod train;
pub mod train_setup;
pub mod validate;

pub use validate::{forward_outputs, grad_outputs, grad_outputs_of, load_batch, run_forward, run_grad};
