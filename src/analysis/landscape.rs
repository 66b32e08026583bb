//! `hrm analyze landscape`: the picture behind the paper's "multiple fixed points" finding.
//! One puzzle runs R times from noisy initial states (H_init / L_init plus Gaussian noise, as
//! in `fixed-points`) for S segments, with no halting (past `halt_max_steps` when S is larger,
//! to see where the state settles). The z_H state after every segment (the whole carry of the
//! puzzle, prefix included) is a point; all R x (S + 1) points are projected on their first
//! two principal components, and each run's path is drawn in the colour of its final answer.
//! Runs that end in the same answer fall into the same attractor; a wrong attractor shows as
//! a cluster of wrong-coloured endpoints.
//!
//! Cost: R x S segments of one puzzle (R rows in one batch), and a Gram matrix of the
//! N = R x (S + 1) points (N^2 x D multiply-adds, D = (prefix + 81) x hidden) whose two leading
//! eigenvectors give the projection (PCA through the Gram matrix, since N << D).

use super::fixed_points::noisy_start;
use crate::act::{Batch, eval_step};
use crate::backend::Backend;
use crate::hrm::Hrm;
use crate::infer::eval::Example;
use crate::infer::perturb::tokens_to_board;
use crate::task::Rules;
use anyhow::{Result, ensure};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// One run's path in the plane of the first two principal components.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LandscapeRun {
    /// Index of the final answer in [`LandscapeReport::answers`].
    pub answer: usize,
    /// (PC1, PC2) of z_H at the start and after each segment.
    pub path: Vec<[f64; 2]>,
    /// Relative change of z_H over the last segment (near 0: the run has settled).
    pub last_change: f64,
}

/// A distinct final answer and how the runs that reached it fared.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LandscapeAnswer {
    /// The answer as text: a Sudoku board as 81 digits (0 where the model put no digit), other
    /// tasks' as [`Rules::line`].
    pub board: String,
    pub runs: usize,
    pub correct: bool,
    /// Passes the task's check (Sudoku: a complete valid grid keeping the givens, right or
    /// another solution; Maze: a shortest path).
    pub valid: bool,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct LandscapeReport {
    pub name: String,
    /// Index of the puzzle in its set.
    pub puzzle: usize,
    pub runs: usize,
    pub segments: usize,
    pub noise_std: f64,
    pub seed: u64,
    /// Fraction of the points' variance along PC1 and PC2.
    pub explained_variance: [f64; 2],
    pub answers: Vec<LandscapeAnswer>,
    pub per_run: Vec<LandscapeRun>,
}

/// Runs `runs` noisy starts of `example` for `segments` segments and projects the z_H path.
#[allow(clippy::too_many_arguments)]
pub fn landscape<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    name: &str,
    rules: Rules,
    example: &Example,
    puzzle: usize,
    runs: usize,
    segments: usize,
    noise_std: f64,
    seed: u64,
) -> Result<LandscapeReport> {
    ensure!(runs >= 2, "--runs must be at least 2 (a landscape compares runs)");
    ensure!(segments >= 1, "--segments must be at least 1");
    ensure!(noise_std >= 0.0 && noise_std.is_finite(), "--noise-std must be a finite number >= 0");
    let n = model.cfg.seq_len;
    let row = model.cfg.total_seq_len() * model.cfg.hidden_size;
    let batch = Batch {
        inputs: example.inputs.repeat(runs),
        puzzle_ids: vec![example.puzzle_id; runs],
        labels: Some(example.labels.repeat(runs)),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut carry = noisy_start(be, model, &batch, noise_std, &mut rng);
    // states[k] holds z_H of every run after k segments.
    let mut states = vec![be.download_act(&carry.z_h)];
    let mut last = None;
    for _ in 0..segments {
        // No halting: a row at halt_max_steps would otherwise be reset by the next step.
        carry.halted.fill(false);
        last = Some(eval_step(be, model, &mut carry, &batch)?.scored.expect("labels given"));
        states.push(be.download_act(&carry.z_h));
    }
    be.check()?;
    let scored = last.expect("segments >= 1");
    let points: Vec<&[f32]> =
        (0..runs).flat_map(|r| states.iter().map(move |s| &s[r * row..(r + 1) * row])).collect();
    let (coords, explained_variance) = pca2(&points);
    let mut answers: Vec<LandscapeAnswer> = Vec::new();
    let mut per_run = Vec::with_capacity(runs);
    for r in 0..runs {
        let tokens = &scored.argmax[r * n..(r + 1) * n];
        let text: String = match rules {
            Rules::Sudoku => tokens_to_board(tokens).iter().map(|&d| char::from(b'0' + d)).collect(),
            _ => rules.line(tokens.iter().map(|&t| t as i32)),
        };
        let answer = match answers.iter().position(|a| a.board == text) {
            Some(i) => i,
            None => {
                answers.push(LandscapeAnswer {
                    board: text,
                    runs: 0,
                    correct: scored.exact[r],
                    valid: rules.verdict(&example.inputs, tokens).is_some_and(|v| v.optimal),
                });
                answers.len() - 1
            }
        };
        answers[answer].runs += 1;
        let (a, b) =
            (&states[segments][r * row..(r + 1) * row], &states[segments - 1][r * row..(r + 1) * row]);
        per_run.push(LandscapeRun {
            answer,
            path: coords[r * (segments + 1)..(r + 1) * (segments + 1)].to_vec(),
            last_change: super::trajectory::rel_change(a, b),
        });
    }
    Ok(LandscapeReport {
        name: name.to_string(),
        puzzle,
        runs,
        segments,
        noise_std,
        seed,
        explained_variance,
        answers,
        per_run,
    })
}

/// The first two principal components of `points` (all of one length D): each point's
/// coordinates along them, and the fraction of the total variance each carries. Computed from
/// the N x N Gram matrix of the centred points (f64): for its eigenpairs (l, v), the point i
/// lies at sqrt(l) v[i] along the component. The sign of each component is fixed (its largest
/// coordinate is positive) so the picture is deterministic.
pub fn pca2(points: &[&[f32]]) -> (Vec<[f64; 2]>, [f64; 2]) {
    let n = points.len();
    if n == 0 {
        return (Vec::new(), [0.0; 2]);
    }
    let d = points[0].len();
    let mut mean = vec![0f64; d];
    for p in points {
        for (m, &x) in mean.iter_mut().zip(p.iter()) {
            *m += x as f64;
        }
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let centred: Vec<Vec<f64>> =
        points.iter().map(|p| p.iter().zip(&mean).map(|(&x, m)| x as f64 - m).collect()).collect();
    let mut gram = vec![0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            let g: f64 = centred[i].iter().zip(&centred[j]).map(|(a, b)| a * b).sum();
            gram[i * n + j] = g;
            gram[j * n + i] = g;
        }
    }
    let trace: f64 = (0..n).map(|i| gram[i * n + i]).sum();
    let (vals, vecs) = top2_eigen(&gram, n);
    let coords = (0..n).map(|i| [0, 1].map(|c| vals[c].max(0.0).sqrt() * vecs[c][i])).collect();
    let explained = if trace > 0.0 { [vals[0] / trace, vals[1] / trace] } else { [0.0; 2] };
    (coords, explained)
}

/// The two leading eigenpairs of a symmetric positive semi-definite `n` x `n` matrix, by
/// block power iteration with Gram-Schmidt (deterministic start, fixed iteration count plus a
/// convergence test).
fn top2_eigen(a: &[f64], n: usize) -> ([f64; 2], [Vec<f64>; 2]) {
    let matvec =
        |v: &[f64]| -> Vec<f64> { (0..n).map(|i| (0..n).map(|j| a[i * n + j] * v[j]).sum()).collect() };
    let dot = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(a, b)| a * b).sum::<f64>();
    let normalize = |v: &mut Vec<f64>| {
        let norm = dot(v, v).sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
    };
    // Start vectors that no structured data is orthogonal to by accident.
    let mut v: [Vec<f64>; 2] =
        [0, 1].map(|c| (0..n).map(|i| 1.0 + ((i * (c + 3) + c) % 7) as f64 * 0.1).collect());
    let mut vals = [0f64; 2];
    for _ in 0..5000 {
        let (mut w0, mut w1) = (matvec(&v[0]), matvec(&v[1]));
        normalize(&mut w0);
        let p = dot(&w1, &w0);
        w1.iter_mut().zip(&w0).for_each(|(x, y)| *x -= p * y);
        normalize(&mut w1);
        let w = [w0, w1];
        let moved = (0..2).map(|c| 1.0 - dot(&w[c], &v[c]).abs()).fold(0.0, f64::max);
        v = w;
        if moved < 1e-14 {
            break;
        }
    }
    for c in 0..2 {
        vals[c] = dot(&v[c], &matvec(&v[c]));
        let big = v[c].iter().copied().fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        if big < 0.0 {
            v[c].iter_mut().for_each(|x| *x = -*x);
        }
    }
    (vals, v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_finds_the_planted_axes_and_their_variance() {
        // Points 3a e_3 + b e_17 + tiny noise in 40 dimensions, (a, b) on a 6 x 6 grid (so a and
        // b are exactly uncorrelated): PC1 is e_3 (9x the variance), PC2 e_17.
        let d = 40;
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        use rand::Rng;
        let mut pts = Vec::new();
        let mut truth = Vec::new();
        for ia in 0..6 {
            for ib in 0..6 {
                let (a, b) = (ia as f64 / 2.5 - 1.0, ib as f64 / 2.5 - 1.0);
                let mut p = vec![0f32; d];
                p[3] = (3.0 * a) as f32 + 5.0;
                p[17] = b as f32 - 2.0;
                for x in p.iter_mut() {
                    *x += rng.gen_range(-1e-4..1e-4);
                }
                pts.push(p);
                truth.push((3.0 * a, b));
            }
        }
        let count = truth.len() as f64;
        let refs: Vec<&[f32]> = pts.iter().map(|p| p.as_slice()).collect();
        let (coords, var) = pca2(&refs);
        let (ma, mb) =
            (truth.iter().map(|t| t.0).sum::<f64>() / count, truth.iter().map(|t| t.1).sum::<f64>() / count);
        let va: f64 = truth.iter().map(|t| (t.0 - ma).powi(2)).sum();
        let vb: f64 = truth.iter().map(|t| (t.1 - mb).powi(2)).sum();
        assert!((var[0] - va / (va + vb)).abs() < 1e-3, "{var:?}");
        assert!((var[1] - vb / (va + vb)).abs() < 1e-3, "{var:?}");
        // Coordinates equal the centred planted values up to one sign per component.
        for c in 0..2 {
            let s =
                if (coords[0][c] > 0.0) == ((if c == 0 { truth[0].0 - ma } else { truth[0].1 - mb }) > 0.0) {
                    1.0
                } else {
                    -1.0
                };
            for (x, t) in coords.iter().zip(&truth) {
                let want = if c == 0 { t.0 - ma } else { t.1 - mb };
                assert!((s * x[c] - want).abs() < 1e-3, "component {c}: {} vs {want}", x[c]);
            }
        }
    }

    #[test]
    fn pca_of_identical_points_is_the_origin() {
        let p = vec![1.5f32; 8];
        let (coords, var) = pca2(&[&p, &p, &p]);
        assert!(coords.iter().all(|c| c[0] == 0.0 && c[1] == 0.0));
        assert_eq!(var, [0.0, 0.0]);
    }
}
