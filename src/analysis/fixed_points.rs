//! `hrm analyze fixed-points`: does a puzzle have one attractor or several (the paper's
//! "multiple fixed points" finding)? Per puzzle, R runs start from perturbed initial states
//! (H_init / L_init plus Gaussian noise of standard deviation `noise_std`, 2 by default as in
//! the paper) and run all `halt_max_steps` segments. Per puzzle we count the distinct final
//! answers, how many runs end with a valid solution (keeping the givens), how many are right,
//! and how many end at a wrong fixed point: the state has stopped moving (relative change of
//! z_H over the last segment below `tolerance`) but the board is wrong.

use super::trajectory::rel_change;
use crate::act::{Batch, Carry, eval_step};
use crate::backend::Backend;
use crate::hrm::Hrm;
use crate::infer::eval::Example;
use crate::task::Rules;
use anyhow::{Result, ensure};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::HashSet;

/// One puzzle's runs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PuzzleFixedPoints {
    pub distinct_answers: usize,
    /// Runs ending with a valid solution that keeps the givens.
    pub valid_runs: usize,
    /// Runs ending with the labelled solution.
    pub correct_runs: usize,
    /// Runs whose state stopped moving with a wrong board.
    pub wrong_fixed_point_runs: usize,
    /// Runs whose state still moved more than the tolerance in the last segment.
    pub unsettled_runs: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct FixedPointsReport {
    pub name: String,
    pub puzzles: usize,
    pub runs_per_puzzle: usize,
    pub noise_std: f64,
    pub tolerance: f64,
    pub segments: usize,
    /// Mean over puzzles of the number of distinct final answers.
    pub mean_distinct_answers: f64,
    /// Puzzles whose runs end in more than one answer.
    pub puzzles_with_several_answers: usize,
    /// Puzzles with at least one right and at least one wrong run.
    pub puzzles_right_and_wrong: usize,
    /// Fractions over all runs.
    pub correct_run_fraction: f64,
    pub valid_run_fraction: f64,
    pub wrong_fixed_point_fraction: f64,
    pub unsettled_fraction: f64,
    pub per_puzzle: Vec<PuzzleFixedPoints>,
}

/// A standard normal draw (Box-Muller).
fn normal(rng: &mut ChaCha8Rng) -> f32 {
    let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
    let u2: f64 = rng.r#gen();
    ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
}

/// A carry holding `batch` whose states start at H_init / L_init plus Gaussian noise of
/// standard deviation `noise_std` (the noise drawn from `rng`, z_H first). Its rows are not
/// halted, so the first eval step keeps the noisy start.
pub fn noisy_start<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    batch: &Batch,
    noise_std: f64,
    rng: &mut ChaCha8Rng,
) -> Carry<B> {
    let mut carry = Carry::fresh(be, model, batch.len());
    carry.take_new_data(be, model, batch);
    carry.halted.fill(false);
    for z in [&mut carry.z_h, &mut carry.z_l] {
        let mut host = be.download_act(z);
        host.iter_mut().for_each(|v| *v += noise_std as f32 * normal(rng));
        *z = be.upload_act(&host);
    }
    carry
}

/// Runs the analysis: `runs` noisy starts per puzzle, batched `batch_size` rows at a time.
#[allow(clippy::too_many_arguments)]
pub fn fixed_points<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    name: &str,
    rules: Rules,
    examples: &[Example],
    runs: usize,
    noise_std: f64,
    tolerance: f64,
    seed: u64,
    batch_size: usize,
) -> Result<FixedPointsReport> {
    ensure!(runs >= 1, "--runs must be at least 1");
    ensure!(noise_std >= 0.0 && noise_std.is_finite(), "--noise-std must be a finite number >= 0");
    let cfg = &model.cfg;
    let (n, segs) = (cfg.seq_len, cfg.halt_max_steps);
    let row = cfg.total_seq_len() * cfg.hidden_size;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let per_batch = (batch_size / runs).max(1);
    let mut per_puzzle = Vec::with_capacity(examples.len());
    for chunk in examples.chunks(per_batch) {
        let rep = |f: &dyn Fn(&Example) -> Vec<i32>| -> Vec<i32> {
            chunk.iter().flat_map(|e| std::iter::repeat_n(f(e), runs).flatten()).collect()
        };
        let batch = Batch {
            inputs: rep(&|e| e.inputs.clone()),
            puzzle_ids: chunk.iter().flat_map(|e| std::iter::repeat_n(e.puzzle_id, runs)).collect(),
            labels: Some(rep(&|e| e.labels.clone())),
        };
        let mut carry = noisy_start(be, model, &batch, noise_std, &mut rng);
        let mut before_last = Vec::new();
        let mut last = None;
        for k in 0..segs {
            if k + 1 == segs {
                before_last = be.download_act(&carry.z_h);
            }
            last = Some(eval_step(be, model, &mut carry, &batch)?.scored.expect("labels given"));
        }
        let scored = last.expect("halt_max_steps >= 1");
        let after = be.download_act(&carry.z_h);
        be.check()?;
        for (p, e) in chunk.iter().enumerate() {
            let mut answers = HashSet::new();
            let mut st = PuzzleFixedPoints::default();
            for r in p * runs..(p + 1) * runs {
                let answer = &scored.argmax[r * n..(r + 1) * n];
                // (distinct as text: Sudoku's boards, whatever token a cell without a digit has)
                answers.insert(rules.line(answer.iter().map(|&t| t as i32)));
                let correct = scored.exact[r];
                st.correct_runs += correct as usize;
                st.valid_runs += rules.verdict(&e.inputs, answer).is_some_and(|v| v.optimal) as usize;
                let settled =
                    rel_change(&after[r * row..(r + 1) * row], &before_last[r * row..(r + 1) * row])
                        < tolerance;
                st.wrong_fixed_point_runs += (settled && !correct) as usize;
                st.unsettled_runs += (!settled) as usize;
            }
            st.distinct_answers = answers.len();
            per_puzzle.push(st);
        }
    }
    let puzzles = examples.len();
    let total_runs = (puzzles * runs).max(1) as f64;
    let sum = |f: fn(&PuzzleFixedPoints) -> usize| per_puzzle.iter().map(f).sum::<usize>() as f64;
    Ok(FixedPointsReport {
        name: name.to_string(),
        puzzles,
        runs_per_puzzle: runs,
        noise_std,
        tolerance,
        segments: segs,
        mean_distinct_answers: sum(|p| p.distinct_answers) / puzzles.max(1) as f64,
        puzzles_with_several_answers: per_puzzle.iter().filter(|p| p.distinct_answers > 1).count(),
        puzzles_right_and_wrong: per_puzzle
            .iter()
            .filter(|p| p.correct_runs > 0 && p.correct_runs < runs)
            .count(),
        correct_run_fraction: sum(|p| p.correct_runs) / total_runs,
        valid_run_fraction: sum(|p| p.valid_runs) / total_runs,
        wrong_fixed_point_fraction: sum(|p| p.wrong_fixed_point_runs) / total_runs,
        unsettled_fraction: sum(|p| p.unsettled_runs) / total_runs,
        per_puzzle,
    })
}
