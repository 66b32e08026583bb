//! `hrm analyze trajectory`: what happens segment by segment (the paper's findings (b) and (c)).
//! Every puzzle runs all `halt_max_steps` segments from a fresh carry; after each segment we
//! record exact and cell accuracy, the relative change of the carry
//! `||z(k) - z(k-1)|| / ||z(k-1)||` for z_H and z_L (z(0) is the initial carry H_init / L_init),
//! the Sudoku conflicts of the decoded board, and q_halt; per puzzle, the segment from which
//! it is right and stays right to the end, and whether a right board was later lost.

use crate::act::{Carry, eval_step};
use crate::backend::Backend;
use crate::hrm::Hrm;
use crate::infer::eval::{Example, batch_of};
use crate::infer::perturb::tokens_to_board;
use crate::task::Rules;
use anyhow::Result;
use serde::Serialize;

/// Means over the puzzles after one segment.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SegmentStats {
    /// 1-based segment number.
    pub segment: usize,
    pub exact_accuracy: f64,
    /// All cells (the reference's token accuracy).
    pub cell_accuracy: f64,
    pub blank_cell_accuracy: f64,
    /// Mean over puzzles of ||z_H(k) - z_H(k-1)|| / ||z_H(k-1)||.
    pub z_h_change: f64,
    pub z_l_change: f64,
    /// Mean Sudoku conflicts of the decoded board (see [`super::conflicts`]; Sudoku only, 0 for
    /// other tasks).
    pub conflicts: f64,
    pub mean_q_halt: f64,
    pub mean_q_continue: f64,
    /// Fraction with q_halt > q_continue.
    pub act_halt_fraction: f64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct TrajectoryReport {
    pub name: String,
    pub puzzles: usize,
    pub segments: usize,
    pub per_segment: Vec<SegmentStats>,
    /// `settle_histogram[k - 1]`: puzzles right from segment k to the last segment.
    pub settle_histogram: Vec<usize>,
    /// Puzzles not right at the last segment.
    pub never_settled: usize,
    /// Puzzles right at some segment but wrong at the last one.
    pub lost_after_correct: usize,
    /// Right-to-wrong transitions between consecutive segments, over all puzzles.
    pub right_to_wrong_flips: usize,
    /// Per puzzle: the segment from which it stays right (null: wrong at the end).
    pub settle_segment: Vec<Option<usize>>,
}

/// `||new - old|| / ||old||` (Euclidean, in f64).
pub(crate) fn rel_change(new: &[f32], old: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (a, b) in new.iter().zip(old) {
        num += (*a as f64 - *b as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

/// Runs the trajectory analysis on `examples` in batches of `batch_size`.
pub fn trajectory<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    name: &str,
    rules: Rules,
    examples: &[Example],
    batch_size: usize,
) -> Result<TrajectoryReport> {
    let cfg = &model.cfg;
    let (n, segs) = (cfg.seq_len, cfg.halt_max_steps);
    let row = cfg.total_seq_len() * cfg.hidden_size;
    let mut sums = vec![SegmentStats::default(); segs];
    let mut correct: Vec<Vec<bool>> = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(batch_size.max(1)) {
        let b = chunk.len();
        let batch = batch_of(chunk);
        let mut carry = Carry::fresh(be, model, b);
        carry.take_new_data(be, model, &batch);
        let (mut zh, mut zl) = (be.download_act(&carry.z_h), be.download_act(&carry.z_l));
        let mut ok = vec![Vec::with_capacity(segs); b];
        for (k, s) in sums.iter_mut().enumerate() {
            let seg = eval_step(be, model, &mut carry, &batch)?;
            let scored = seg.scored.expect("labels given");
            let (zh2, zl2) = (be.download_act(&carry.z_h), be.download_act(&carry.z_l));
            be.check()?;
            for (j, e) in chunk.iter().enumerate() {
                let pred = &scored.argmax[j * n..(j + 1) * n];
                let (mut cells, mut cells_ok, mut blanks, mut blanks_ok) = (0usize, 0usize, 0usize, 0usize);
                for ((&x, &y), &t) in e.inputs.iter().zip(&e.labels).zip(pred) {
                    if y != 0 {
                        cells += 1;
                        cells_ok += (t as i32 == y) as usize;
                        if rules.is_blank(x) {
                            blanks += 1;
                            blanks_ok += (t as i32 == y) as usize;
                        }
                    }
                }
                s.segment = k + 1;
                s.exact_accuracy += scored.exact[j] as u8 as f64;
                s.cell_accuracy += cells_ok as f64 / cells.max(1) as f64;
                s.blank_cell_accuracy += if blanks == 0 { 1.0 } else { blanks_ok as f64 / blanks as f64 };
                s.z_h_change += rel_change(&zh2[j * row..(j + 1) * row], &zh[j * row..(j + 1) * row]);
                s.z_l_change += rel_change(&zl2[j * row..(j + 1) * row], &zl[j * row..(j + 1) * row]);
                if rules == Rules::Sudoku {
                    s.conflicts += super::conflicts(&tokens_to_board(pred)) as f64;
                }
                s.mean_q_halt += seg.heads.q_halt[j] as f64;
                s.mean_q_continue += seg.heads.q_continue[j] as f64;
                let halts = crate::act::wants_halt(
                    model.cfg.no_act_continue(),
                    seg.heads.q_halt[j],
                    seg.heads.q_continue[j],
                );
                s.act_halt_fraction += halts as u8 as f64;
                ok[j].push(scored.exact[j]);
            }
            (zh, zl) = (zh2, zl2);
        }
        correct.extend(ok);
    }
    let count = examples.len().max(1) as f64;
    for s in &mut sums {
        for v in [
            &mut s.exact_accuracy,
            &mut s.cell_accuracy,
            &mut s.blank_cell_accuracy,
            &mut s.z_h_change,
            &mut s.z_l_change,
            &mut s.conflicts,
            &mut s.mean_q_halt,
            &mut s.mean_q_continue,
            &mut s.act_halt_fraction,
        ] {
            *v /= count;
        }
    }
    let mut r = TrajectoryReport {
        name: name.to_string(),
        puzzles: examples.len(),
        segments: segs,
        per_segment: sums,
        settle_histogram: vec![0; segs],
        ..Default::default()
    };
    for c in &correct {
        let settle = if c.last() == Some(&true) {
            let k = c.iter().rposition(|&x| !x).map_or(0, |i| i + 1);
            r.settle_histogram[k] += 1;
            Some(k + 1)
        } else {
            r.never_settled += 1;
            if c.iter().any(|&x| x) {
                r.lost_after_correct += 1;
            }
            None
        };
        r.right_to_wrong_flips += c.windows(2).filter(|w| w[0] && !w[1]).count();
        r.settle_segment.push(settle);
    }
    Ok(r)
}
