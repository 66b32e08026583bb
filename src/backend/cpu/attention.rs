//! Non-causal multi-head attention on the fused qkv rows, scale 1/sqrt(head_dim), with the
//! log-sum-exp saved so the backward recomputes probabilities instead of storing them
//! (flash-attention's recipe). Cost per (batch, head): 4*S^2*hd FLOPs forward, 2.5x backward.

use rayon::prelude::*;

struct Dims {
    hd: usize,
    d: usize,
    scale: f32,
}

impl Dims {
    fn new(heads: usize, hd: usize) -> Self {
        Dims { hd, d: heads * hd, scale: 1.0 / (hd as f32).sqrt() }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
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
    let dm = Dims::new(heads, head_dim);
    let d = dm.d;
    assert_eq!(qkv.len(), batch * seq * 3 * d);
    assert_eq!(out.len(), batch * seq * d);
    assert_eq!(lse.len(), batch * heads * seq);
    out.par_chunks_mut(seq * d)
        .zip(lse.par_chunks_mut(heads * seq))
        .zip(qkv.par_chunks(seq * 3 * d))
        .for_each(|((o_b, lse_b), qkv_b)| {
            let mut p = vec![0.0f32; seq];
            for h in 0..heads {
                let (ko, vo) = (d + h * dm.hd, 2 * d + h * dm.hd);
                for i in 0..seq {
                    let q = &qkv_b[i * 3 * d + h * dm.hd..i * 3 * d + (h + 1) * dm.hd];
                    let mut m = f32::NEG_INFINITY;
                    for (j, pj) in p.iter_mut().enumerate() {
                        let k = &qkv_b[j * 3 * d + ko..j * 3 * d + ko + dm.hd];
                        *pj = dot(q, k) * dm.scale;
                        m = m.max(*pj);
                    }
                    let mut l = 0.0f32;
                    for pj in p.iter_mut() {
                        *pj = (*pj - m).exp();
                        l += *pj;
                    }
                    lse_b[h * seq + i] = m + l.ln();
                    let o = &mut o_b[i * d + h * dm.hd..i * d + (h + 1) * dm.hd];
                    o.fill(0.0);
                    for (j, &pj) in p.iter().enumerate() {
                        let v = &qkv_b[j * 3 * d + vo..j * 3 * d + vo + dm.hd];
                        let w = pj / l;
                        o.iter_mut().zip(v).for_each(|(a, b)| *a += w * b);
                    }
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
    let dm = Dims::new(heads, head_dim);
    let (d, hd) = (dm.d, dm.hd);
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
            dq_b.fill(0.0);
            let mut ds = vec![0.0f32; seq];
            for h in 0..heads {
                let (qo, ko, vo) = (h * hd, d + h * hd, 2 * d + h * hd);
                for i in 0..seq {
                    let q = &qkv_b[i * 3 * d + qo..i * 3 * d + qo + hd];
                    let d_o = &do_b[i * d + h * hd..i * d + (h + 1) * hd];
                    let delta = dot(d_o, &o_b[i * d + h * hd..i * d + (h + 1) * hd]);
                    let l = lse_b[h * seq + i];
                    for (j, dsj) in ds.iter_mut().enumerate() {
                        let k = &qkv_b[j * 3 * d + ko..j * 3 * d + ko + hd];
                        let v = &qkv_b[j * 3 * d + vo..j * 3 * d + vo + hd];
                        let p = (dot(q, k) * dm.scale - l).exp();
                        // dV_j += p * d_o_i
                        let dv = &mut dq_b[j * 3 * d + vo..j * 3 * d + vo + hd];
                        dv.iter_mut().zip(d_o).for_each(|(a, b)| *a += p * b);
                        *dsj = p * (dot(d_o, v) - delta) * dm.scale;
                    }
                    for (j, &dsj) in ds.iter().enumerate() {
                        let (kr, qr) = (j * 3 * d + ko, i * 3 * d + qo);
                        for c in 0..hd {
                            dq_b[qr + c] += dsj * qkv_b[kr + c];
                        }
                        for c in 0..hd {
                            dq_b[kr + c] += dsj * q[c];
                        }
                    }
                }
            }
        });
}
