//! Analysis and reporting tools: run plots, and the Augmented HRM paper's mechanistic
//! analyses (`hrm analyze`): the per-segment reasoning trajectory, the trivial-puzzle test and
//! the multiple-fixed-points probe.

pub mod fixed_points;
pub mod plot;
pub mod trajectory;
pub mod trivial;

use crate::sudoku::board::{Board, UNITS};

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
