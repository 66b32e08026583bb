//! Inference: evaluation over puzzle sets (all segments, no early halting) and single-puzzle
//! solving.

pub mod eval;
