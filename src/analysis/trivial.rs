//! `hrm analyze trivial`: the paper's finding (a). Take solved grids (a set's solutions), blank
//! k random cells (k = 1, 2, 4, 8, 16 by default; seeded), and run the model: a model at a
//! true fixed point of the solution would fill them all, yet HRM can fail with one unknown cell.

use crate::backend::Backend;
use crate::hrm::Hrm;
use crate::infer::eval::predict;
use crate::infer::perturb::tokens_to_board;
use crate::sudoku::board::{Board, is_solution_of};
use crate::train::data::example_of;
use anyhow::{Result, bail};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Results for one number of blanks.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TrivialRow {
    pub blanks: usize,
    pub puzzles: usize,
    /// The model's board is the original grid.
    pub exact_accuracy: f64,
    /// The model's board is a valid solution keeping the givens (it may differ from the
    /// original where k blanks admit several solutions).
    pub valid_fraction: f64,
    /// Blank cells filled with the original digit.
    pub blank_cell_accuracy: f64,
    /// Givens the model changed, per puzzle.
    pub givens_changed: f64,
    pub act_halt_fraction: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TrivialReport {
    pub name: String,
    pub seed: u64,
    pub segments: usize,
    pub rows: Vec<TrivialRow>,
}

/// `grid` with `k` random cells blanked (the stream is seeded by (`seed`, `k`, puzzle index)).
pub fn blank_cells(grid: &Board, k: usize, seed: u64, index: usize) -> Board {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ ((k as u64) << 32) ^ index as u64);
    let mut cells: Vec<usize> = (0..81).collect();
    cells.shuffle(&mut rng);
    let mut q = *grid;
    for &c in &cells[..k.min(81)] {
        q[c] = 0;
    }
    q
}

/// Runs the trivial-puzzle test on `solutions` (complete valid grids) for each k in `ks`.
pub fn trivial<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    name: &str,
    solutions: &[Board],
    ks: &[usize],
    seed: u64,
    batch_size: usize,
) -> Result<TrivialReport> {
    if let Some(&k) = ks.iter().find(|&&k| k == 0 || k > 81) {
        bail!("--blanks: {k} is not a number of cells in 1..=81");
    }
    let mut rows = Vec::new();
    for &k in ks {
        let questions: Vec<Board> =
            solutions.iter().enumerate().map(|(i, g)| blank_cells(g, k, seed, i)).collect();
        let examples: Vec<_> = questions.iter().zip(solutions).map(|(q, g)| example_of(q, g)).collect();
        let p = predict(be, model, &examples, batch_size, |_| {})?;
        let mut r = TrivialRow { blanks: k, puzzles: solutions.len(), ..Default::default() };
        for (i, (q, g)) in questions.iter().zip(solutions).enumerate() {
            let ans = tokens_to_board(&p.tokens[i * 81..(i + 1) * 81]);
            r.exact_accuracy += (ans == *g) as u8 as f64;
            r.valid_fraction += is_solution_of(q, &ans) as u8 as f64;
            let blanks_ok = (0..81).filter(|&c| q[c] == 0 && ans[c] == g[c]).count();
            r.blank_cell_accuracy += blanks_ok as f64 / k as f64;
            r.givens_changed += (0..81).filter(|&c| q[c] != 0 && ans[c] != q[c]).count() as f64;
            let halts = crate::act::wants_halt(model.cfg.no_act_continue(), p.q_halt[i], p.q_continue[i]);
            r.act_halt_fraction += halts as u8 as f64;
        }
        let n = solutions.len().max(1) as f64;
        for v in [
            &mut r.exact_accuracy,
            &mut r.valid_fraction,
            &mut r.blank_cell_accuracy,
            &mut r.givens_changed,
            &mut r.act_halt_fraction,
        ] {
            *v /= n;
        }
        rows.push(r);
    }
    Ok(TrivialReport { name: name.to_string(), seed, segments: model.cfg.halt_max_steps, rows })
}
