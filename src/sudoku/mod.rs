//! Sudoku data: solver, rating, generator, symmetry, file formats, training-set builder and the
//! `hrm data` command line.

pub mod board;
pub mod cli;
pub mod dataset;
pub mod formats;
pub mod generate;
pub mod rating;
pub mod solver;
pub mod symmetry;

pub use board::Board;
