//! Analysis and reporting tools: run plots, and the Augmented HRM paper's mechanistic
//! analyses (`hrm analyze`): the per-segment reasoning trajectory, the trivial-puzzle test and
//! the multiple-fixed-points probe.

pub mod critical;
pub mod fixed_points;
pub mod landscape;
pub mod plot;
pub mod trajectory;
pub mod trivial;

use crate::sudoku::board::{Board, UNITS};

/// What `hrm demo` writes into `RUN/analysis/` (and the only files its `--overwrite` removes
/// there): the three findings' JSON and SVG files, as `hrm analyze` names them.
pub const DEMO_FILES: &[&str] = &[
    "trivial.json",
    "trivial.svg",
    "fixed_points.json",
    "fixed_points.svg",
    "landscape.json",
    "landscape.svg",
];

/// Sudoku conflicts of a (partial) board, as the paper counts them: over the 27 rows, columns
/// and boxes, the sum of `relu(count(d) - 1)` for each digit d (blanks are not digits).
pub fn conflicts(b: &Board) -> usize {
    UNITS
        .iter()
        .map(|u| {
            let mut count = [0usize; 10];
            for &c in u {
                count[b[c as usize] as usize] += 1;
            }
            count[1..].iter().map(|&n| n.saturating_sub(1)).sum::<usize>()
        })
        .sum()
}
