//! AdamATan2 (no epsilon; `atan2` replaces the division) and the SignSGD update of the sparse
//! puzzle embedding, both with decoupled weight decay, as the reference packages compute them.

use super::simd::{atan2_nonneg_x, multiversion};
use rayon::prelude::*;

/// Hyper-parameters of one AdamATan2 step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamHyper {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub weight_decay: f32,
}

/// One AdamATan2 step at `step` (1-based), as the `adam-atan2` package's kernel computes it:
/// `p *= 1 - lr*wd; m = lerp(m, g, 1-b1); v = lerp(v, g^2, 1-b2);
///  p -= lr * atan2(m / (1-b1^t), sqrt(v) / sqrt(1-b2^t))`.
/// (HRM_SPEC.md writes `lr/(1-b1^t) * atan2(m, ..)`; the package divides inside the atan2,
/// and the code wins.) Scalars in f64, cast to f32; lerp as the kernel's two FMAs.
pub fn adam_atan2_step(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], step: u32, h: &AdamHyper) {
    assert!(step >= 1, "AdamATan2 steps are 1-based");
    assert!(p.len() == g.len() && p.len() == m.len() && p.len() == v.len());
    let (lr, b1, b2, wd) = (h.lr as f64, h.beta1 as f64, h.beta2 as f64, h.weight_decay as f64);
    let bc1_recip = (1.0 / (1.0 - b1.powi(step as i32))) as f32;
    let bc2_sqrt = (1.0 - b2.powi(step as i32)).sqrt() as f32;
    let step_size = h.lr;
    let decay = (1.0 - lr * wd) as f32;
    let (w1, w2) = ((1.0 - b1) as f32, (1.0 - b2) as f32);
    p.par_chunks_mut(1 << 14)
        .zip(g.par_chunks(1 << 14))
        .zip(m.par_chunks_mut(1 << 14).zip(v.par_chunks_mut(1 << 14)))
        .for_each(|((p, g), (m, v))| adam_chunk(p, g, m, v, [decay, w1, w2, bc1_recip, bc2_sqrt, step_size]));
}

#[inline(always)]
fn lerp(v0: f32, v1: f32, t: f32) -> f32 {
    t.mul_add(v1, (-t).mul_add(v0, v0))
}

multiversion! {
    /// The AdamATan2 update of one chunk; `k` = [decay, w1, w2, bc1_recip, bc2_sqrt, step_size].
    fn adam_chunk(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: [f32; 6]) {
        let [decay, w1, w2, bc1_recip, bc2_sqrt, step_size] = k;
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        for i in 0..n {
            let gi = g[i];
            let pi = p[i] * decay;
            let mi = lerp(m[i], gi, w1);
            let vi = lerp(v[i], gi * gi, w2);
            m[i] = mi;
            v[i] = vi;
            p[i] = pi - step_size * atan2_nonneg_x(bc1_recip * mi, vi.sqrt() / bc2_sqrt);
        }
    }
}

/// The sparse SignSGD step of the puzzle embedding (the reference's
/// `CastedSparseEmbeddingSignSGD_Distributed`): the gradient rows `row_grads` [rows, row_len]
/// of the batch rows with puzzle ids `ids` are summed per id, in row order, and each id present
/// is updated once, `w = w * (1 - lr*wd) - lr * sign(sum)`. Ids not in the batch keep their row
/// (no decay); ids outside the table are skipped. Cost: rows^2 id comparisons and one pass
/// over the touched rows, independent of the table's size.
pub fn puzzle_sign_sgd(
    w: &mut [f32],
    row_grads: &[f32],
    ids: &[i32],
    row_len: usize,
    lr: f32,
    weight_decay: f32,
) {
    assert!(
        row_len > 0 && w.len().is_multiple_of(row_len),
        "puzzle table of {} values in rows of {row_len}",
        w.len()
    );
    assert_eq!(row_grads.len(), ids.len() * row_len, "one gradient row per puzzle id");
    let table_rows = w.len() / row_len;
    let decay = 1.0 - lr * weight_decay;
    let mut sum = vec![0f32; row_len];
    for (r, &id) in ids.iter().enumerate() {
        // each id once, at its first row; ids outside the table are skipped
        if id < 0 || id as usize >= table_rows || ids[..r].contains(&id) {
            continue;
        }
        sum.fill(0.0);
        for (g, _) in row_grads.chunks(row_len).zip(ids).skip(r).filter(|(_, i)| **i == id) {
            sum.iter_mut().zip(g).for_each(|(s, x)| *s += x);
        }
        let row = &mut w[id as usize * row_len..(id as usize + 1) * row_len];
        for (x, &gv) in row.iter_mut().zip(&sum) {
            let sign = if gv > 0.0 {
                1.0
            } else if gv < 0.0 {
                -1.0
            } else {
                0.0
            };
            *x = *x * decay - lr * sign;
        }
    }
}
