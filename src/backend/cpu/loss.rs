//! Stablemax cross entropy (f64, as the reference), fused with argmax and per-row exact-correct
//! flags, and binary cross entropy with logits for the two Q heads.

use rayon::prelude::*;

/// Per-row results of the LM loss.
#[derive(Clone, Debug, Default)]
pub struct LmLossOut {
    /// sum over valid tokens of -log stablemax(logits)[label], divided by max(1, n_valid).
    pub loss_per_row: Vec<f64>,
    /// every valid token's argmax equals its label (vacuously true for a row without valid
    /// tokens, as the reference's `is_correct.sum(-1) == loss_counts`).
    pub exact: Vec<bool>,
    /// number of valid tokens whose argmax equals the label.
    pub n_correct: Vec<u32>,
    /// number of valid (non-PAD) tokens.
    pub n_valid: Vec<u32>,
    /// argmax per token (lowest index on ties).
    pub argmax: Vec<u8>,
}

/// `s(x) = x < 0 ? 1/(1 - x + 1e-30) : x + 1`, and its derivative.
fn stablemax_s(x: f64) -> (f64, f64) {
    if x < 0.0 {
        let s = 1.0 / (1.0 - x + 1e-30);
        (s, s * s)
    } else {
        (x + 1.0, 1.0)
    }
}

/// `logits` [rows*seq, vocab], `labels` [rows*seq] with 0 = PAD (ignored). When `dlogits` is
/// given it receives `grad_scale * d(row loss)/d(logits)` (overwritten).
pub fn stablemax_ce(
    logits: &[f32],
    labels: &[i32],
    vocab: usize,
    seq: usize,
    grad_scale: f64,
    dlogits: Option<&mut [f32]>,
) -> LmLossOut {
    let rows = labels.len() / seq;
    assert_eq!(labels.len(), rows * seq);
    assert_eq!(logits.len(), rows * seq * vocab);
    let mut out = LmLossOut {
        loss_per_row: vec![0.0; rows],
        exact: vec![false; rows],
        n_correct: vec![0; rows],
        n_valid: vec![0; rows],
        argmax: vec![0; rows * seq],
    };
    let mut scratch;
    let dl: &mut [f32] = match dlogits {
        Some(d) => {
            assert_eq!(d.len(), logits.len());
            d
        }
        None => {
            scratch = vec![0.0f32; logits.len()];
            &mut scratch
        }
    };
    let row_results: Vec<(f64, u32, u32)> = dl
        .par_chunks_mut(seq * vocab)
        .zip(logits.par_chunks(seq * vocab))
        .zip(labels.par_chunks(seq))
        .zip(out.argmax.par_chunks_mut(seq))
        .map(|(((dl_r, lg_r), lb_r), am_r)| {
            let n_valid = lb_r.iter().filter(|&&l| l != 0).count() as u32;
            let div = n_valid.max(1) as f64;
            let mut loss = 0.0f64;
            let mut correct = 0u32;
            for t in 0..seq {
                let x = &lg_r[t * vocab..(t + 1) * vocab];
                let g = &mut dl_r[t * vocab..(t + 1) * vocab];
                let mut best = 0usize;
                for (i, &v) in x.iter().enumerate() {
                    if v > x[best] {
                        best = i;
                    }
                }
                am_r[t] = best as u8;
                let label = lb_r[t];
                if label == 0 {
                    g.fill(0.0);
                    continue;
                }
                let y = label as usize;
                correct += (best == y) as u32;
                let sum: f64 = x.iter().map(|&v| stablemax_s(v as f64).0).sum();
                let (sy, dsy) = stablemax_s(x[y] as f64);
                loss -= (sy / sum).ln();
                let k = grad_scale / div;
                for (i, gi) in g.iter_mut().enumerate() {
                    let ds = stablemax_s(x[i] as f64).1;
                    let mut v = ds / sum;
                    if i == y {
                        v -= dsy / sy;
                    }
                    *gi = (k * v) as f32;
                }
            }
            (loss / div, correct, n_valid)
        })
        .collect();
    for (r, (loss, correct, n_valid)) in row_results.into_iter().enumerate() {
        out.loss_per_row[r] = loss;
        out.n_correct[r] = correct;
        out.n_valid[r] = n_valid;
        out.exact[r] = correct == n_valid;
    }
    out
}

/// Sum of `BCE-with-logits(x, t) = max(x, 0) - x t + log(1 + exp(-|x|))`; `dlogits` receives
/// `grad_scale * (sigmoid(x) - t)` (overwritten).
pub fn bce_with_logits(logits: &[f32], targets: &[f32], grad_scale: f64, dlogits: Option<&mut [f32]>) -> f64 {
    assert_eq!(logits.len(), targets.len());
    let mut sum = 0.0f64;
    for (&x, &t) in logits.iter().zip(targets) {
        let (x, t) = (x as f64, t as f64);
        sum += x.max(0.0) - x * t + (-x.abs()).exp().ln_1p();
    }
    if let Some(d) = dlogits {
        assert_eq!(d.len(), logits.len());
        for ((g, &x), &t) in d.iter_mut().zip(logits).zip(targets) {
            let s = 1.0 / (1.0 + (-(x as f64)).exp());
            *g = (grad_scale * (s - t as f64)) as f32;
        }
    }
    sum
}

pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}
