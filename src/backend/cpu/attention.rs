//! Non-causal multi-head attention on the fused qkv rows, scale 1/sqrt(head_dim), with the
//! log-sum-exp saved so the backward recomputes probabilities instead of storing them
//! (flash-attention's recipe). Per (batch element, head) the products are small GEMMs on
//! gathered contiguous Q, K, V tiles. Cost per (batch, head): 4*S^2*hd FLOPs forward
//! (QK^T and PV), 10*S^2*hd backward (QK^T again, dP, dV, dQ, dK).

use super::simd::{exp, multiversion};
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

/// `c[m, n] (+)= alpha * a[m, k] * b[k, n]` with explicit strides (row stride, column stride)
/// for a and b; c is row-major contiguous.
#[allow(clippy::too_many_arguments)]
fn small_gemm(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [f32],
    accumulate: bool,
    a: &[f32],
    (a_rs, a_cs): (usize, usize),
    b: &[f32],
    (b_rs, b_cs): (usize, usize),
    alpha: f32,
) {
    assert!(c.len() >= m * n);
    assert!(m == 0 || k == 0 || a.len() > (m - 1) * a_rs + (k - 1) * a_cs);
    assert!(n == 0 || k == 0 || b.len() > (k - 1) * b_rs + (n - 1) * b_cs);
    // SAFETY: the asserts above bound every index the strides address.
    unsafe {
        gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// Copy head `h`'s part at column offset `off` of every row of `qkv_b` into a contiguous
/// [seq, hd] tile.
fn gather(qkv_b: &[f32], row: usize, off: usize, hd: usize, tile: &mut [f32]) {
    for (t, dst) in tile.chunks_mut(hd).enumerate() {
        dst.copy_from_slice(&qkv_b[t * row + off..t * row + off + hd]);
    }
}

/// Lanes of the partial maxima and sums in the row reductions (so they vectorise).
const LANES: usize = 16;

multiversion! {
    /// softmax of each row of `s` [seq, seq] in place (already scaled); returns log-sum-exp.
    fn softmax_rows(s: &mut [f32], seq: usize, lse: &mut [f32]) {
        for (row, l) in s.chunks_mut(seq).zip(lse.iter_mut()) {
            let mut mx = [f32::NEG_INFINITY; LANES];
            let mut chunks = row.chunks_exact(LANES);
            for c in &mut chunks {
                for (m, &v) in mx.iter_mut().zip(c) {
                    *m = m.max(v);
                }
            }
            let m = chunks.remainder().iter().fold(mx.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)), |a, &b| a.max(b));
            let mut acc = [0.0f32; LANES];
            let mut chunks = row.chunks_exact_mut(LANES);
            for c in &mut chunks {
                for (a, v) in acc.iter_mut().zip(c.iter_mut()) {
                    *v = exp(*v - m);
                    *a += *v;
                }
            }
            let mut sum = 0.0f32;
            for v in chunks.into_remainder() {
                *v = exp(*v - m);
                sum += *v;
            }
            let sum = acc.iter().sum::<f32>() + sum;
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|v| *v *= inv);
            *l = m + sum.ln();
        }
    }
}

multiversion! {
    /// `p = exp(p - lse[row])` per row of `seq` (the probabilities again, from the saved lse).
    fn exp_minus_lse(p: &mut [f32], seq: usize, lse: &[f32]) {
        for (row, &l) in p.chunks_mut(seq).zip(lse) {
            row.iter_mut().for_each(|v| *v = exp(*v - l));
        }
    }
}

multiversion! {
    /// `dS = P * (dP - delta[row]) * scale`, in place in `dp`.
    fn softmax_grad_rows(dp: &mut [f32], p: &[f32], delta: &[f32], seq: usize, scale: f32) {
        for ((dp_row, p_row), &dl) in dp.chunks_mut(seq).zip(p.chunks(seq)).zip(delta) {
            dp_row.iter_mut().zip(p_row).for_each(|(g, &pv)| *g = pv * (*g - dl) * scale);
        }
    }
}

/// `out[T, heads*hd]` = softmax(q k^T * scale) v per batch element and head;
/// `lse[batch, heads, seq]` = log-sum-exp of the scaled scores.
pub fn attention_fwd(
    qkv: &[f32],
    out: &mut [f32],
    lse: &mut [f32],
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) {
    let (hd, d) = (head_dim, heads * head_dim);
    let scale = 1.0 / (hd as f32).sqrt();
    assert_eq!(qkv.len(), batch * seq * 3 * d);
    assert_eq!(out.len(), batch * seq * d);
    assert_eq!(lse.len(), batch * heads * seq);
    out.par_chunks_mut(seq * d)
        .zip(lse.par_chunks_mut(heads * seq))
        .zip(qkv.par_chunks(seq * 3 * d))
        .for_each(|((o_b, lse_b), qkv_b)| {
            let mut p = vec![0.0f32; seq * seq];
            let mut o = vec![0.0f32; seq * hd];
            for h in 0..heads {
                let (qo, ko, vo) = (h * hd, d + h * hd, 2 * d + h * hd);
                // S = Q K^T * scale, read in place from the fused rows (row stride 3d).
                small_gemm(
                    seq,
                    seq,
                    hd,
                    &mut p,
                    false,
                    &qkv_b[qo..],
                    (3 * d, 1),
                    &qkv_b[ko..],
                    (1, 3 * d),
                    scale,
                );
                softmax_rows(&mut p, seq, &mut lse_b[h * seq..(h + 1) * seq]);
                small_gemm(seq, hd, seq, &mut o, false, &p, (seq, 1), &qkv_b[vo..], (3 * d, 1), 1.0);
                for (t, src) in o.chunks(hd).enumerate() {
                    o_b[t * d + h * hd..t * d + (h + 1) * hd].copy_from_slice(src);
                }
            }
        });
}

/// Gradients of the attention with respect to the (roped) q, k and v parts of qkv, written
/// into `dqkv` (overwritten) in the same fused layout.
#[allow(clippy::too_many_arguments)]
pub fn attention_bwd(
    qkv: &[f32],
    out: &[f32],
    lse: &[f32],
    dout: &[f32],
    dqkv: &mut [f32],
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) {
    let (hd, d) = (head_dim, heads * head_dim);
    let scale = 1.0 / (hd as f32).sqrt();
    assert_eq!(qkv.len(), batch * seq * 3 * d);
    assert_eq!(dqkv.len(), qkv.len());
    assert_eq!(out.len(), batch * seq * d);
    assert_eq!(dout.len(), out.len());
    assert_eq!(lse.len(), batch * heads * seq);
    dqkv.par_chunks_mut(seq * 3 * d)
        .zip(qkv.par_chunks(seq * 3 * d))
        .zip(out.par_chunks(seq * d).zip(dout.par_chunks(seq * d)))
        .zip(lse.par_chunks(heads * seq))
        .for_each(|(((dq_b, qkv_b), (o_b, do_b)), lse_b)| {
            let mut p = vec![0.0f32; seq * seq];
            let mut dp = vec![0.0f32; seq * seq];
            let mut d_o = vec![0.0f32; seq * hd];
            let mut tile = vec![0.0f32; seq * hd];
            let mut delta = vec![0.0f32; seq];
            for h in 0..heads {
                let (qo, ko, vo) = (h * hd, d + h * hd, 2 * d + h * hd);
                gather(do_b, d, h * hd, hd, &mut d_o);
                for (t, dl) in delta.iter_mut().enumerate() {
                    let o = &o_b[t * d + h * hd..t * d + (h + 1) * hd];
                    *dl = o.iter().zip(&d_o[t * hd..(t + 1) * hd]).map(|(a, b)| a * b).sum();
                }
                // P = exp(Q K^T * scale - lse)
                small_gemm(
                    seq,
                    seq,
                    hd,
                    &mut p,
                    false,
                    &qkv_b[qo..],
                    (3 * d, 1),
                    &qkv_b[ko..],
                    (1, 3 * d),
                    scale,
                );
                exp_minus_lse(&mut p, seq, &lse_b[h * seq..(h + 1) * seq]);
                // dV = P^T dO
                small_gemm(seq, hd, seq, &mut tile, false, &p, (1, seq), &d_o, (hd, 1), 1.0);
                for (t, src) in tile.chunks(hd).enumerate() {
                    dq_b[t * 3 * d + vo..t * 3 * d + vo + hd].copy_from_slice(src);
                }
                // dP = dO V^T; dS = P * (dP - delta) * scale (kept in dp)
                small_gemm(seq, seq, hd, &mut dp, false, &d_o, (hd, 1), &qkv_b[vo..], (1, 3 * d), 1.0);
                softmax_grad_rows(&mut dp, &p, &delta, seq, scale);
                // dQ = dS K
                small_gemm(seq, hd, seq, &mut tile, false, &dp, (seq, 1), &qkv_b[ko..], (3 * d, 1), 1.0);
                for (t, src) in tile.chunks(hd).enumerate() {
                    dq_b[t * 3 * d + qo..t * 3 * d + qo + hd].copy_from_slice(src);
                }
                // dK = dS^T Q
                small_gemm(seq, hd, seq, &mut tile, false, &dp, (1, seq), &qkv_b[qo..], (3 * d, 1), 1.0);
                for (t, src) in tile.chunks(hd).enumerate() {
                    dq_b[t * 3 * d + ko..t * 3 * d + ko + hd].copy_from_slice(src);
                }
            }
        });
}
