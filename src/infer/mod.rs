//! Inference: evaluation over puzzle sets (all segments, no early halting), single-puzzle
//! solving, and Augmented HRM's perturbed inference with answer selection.

pub mod augmented;
pub mod eval;
pub mod passes;
pub mod perturb;
pub mod select;
