//! Rotary position embedding, rotate-half convention (`rotate_half(x) = cat(-x2, x1)`), applied
//! in place to the q and k parts of each fused qkv row `[q heads | k heads | v heads]`.

use rayon::prelude::*;

/// cos and sin tables [seq, head_dim], computed in f32 like the reference
/// (`inv_freq = 1 / theta^(arange(0, d, 2) / d)`, `emb = cat(freqs, freqs)`).
pub fn rope_tables(seq: usize, head_dim: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
    let mut cos = vec![0.0; seq * head_dim];
    let mut sin = vec![0.0; seq * head_dim];
    for p in 0..seq {
        for i in 0..head_dim {
            let f = p as f32 * inv_freq[i % half];
            cos[p * head_dim + i] = f.cos();
            sin[p * head_dim + i] = f.sin();
        }
    }
    (cos, sin)
}

/// Rotate one head vector: `y = x*cos + rotate_half(x)*sin` (sign = +1) or its transpose
/// `dx = dy*cos + rotate_half^T(dy*sin)` (sign = -1, the backward).
fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32], backward: bool) {
    let half = x.len() / 2;
    for i in 0..half {
        let (a, b) = (x[i], x[i + half]);
        if backward {
            x[i] = a * cos[i] + b * sin[i + half];
            x[i + half] = b * cos[i + half] - a * sin[i];
        } else {
            x[i] = a * cos[i] - b * sin[i];
            x[i + half] = b * cos[i + half] + a * sin[i + half];
        }
    }
}

fn apply(
    qkv: &mut [f32],
    cos: &[f32],
    sin: &[f32],
    seq: usize,
    heads: usize,
    head_dim: usize,
    backward: bool,
) {
    let d = heads * head_dim;
    assert_eq!(qkv.len() % (3 * d), 0);
    assert_eq!(cos.len(), seq * head_dim);
    qkv.par_chunks_mut(3 * d).enumerate().for_each(|(t, row)| {
        let p = t % seq;
        let (c, s) = (&cos[p * head_dim..(p + 1) * head_dim], &sin[p * head_dim..(p + 1) * head_dim]);
        for h in row[..2 * d].chunks_mut(head_dim) {
            rotate(h, c, s, backward);
        }
    });
}

pub fn rope_fwd(qkv: &mut [f32], cos: &[f32], sin: &[f32], seq: usize, heads: usize, head_dim: usize) {
    apply(qkv, cos, sin, seq, heads, head_dim, false);
}

pub fn rope_bwd(dqkv: &mut [f32], cos: &[f32], sin: &[f32], seq: usize, heads: usize, head_dim: usize) {
    apply(dqkv, cos, sin, seq, heads, head_dim, true);
}
