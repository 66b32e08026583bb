//! Residual add + RMSNorm without weight (HRM's post-norm), in f32:
//! `y = (x + r) * rstd`, `rstd = 1 / sqrt(mean((x + r)^2) + eps)`.

// The zipped row iterators' closure types are long but plain.
#![allow(clippy::type_complexity)]

use rayon::prelude::*;

const PAR_MIN_ROWS: usize = 64;

/// `y = rmsnorm(x + r)` per row of `d`; saves `rstd` per row for the backward.
pub fn add_rms_norm_fwd(x: &[f32], r: &[f32], y: &mut [f32], rstd: &mut [f32], d: usize, eps: f32) {
    let rows = x.len() / d;
    assert_eq!(x.len(), rows * d);
    assert_eq!(r.len(), x.len());
    assert_eq!(y.len(), x.len());
    assert_eq!(rstd.len(), rows);
    let body = |((yrow, s), (xrow, rrow)): ((&mut [f32], &mut f32), (&[f32], &[f32]))| {
        let mut ss = 0.0f32;
        for ((yv, &a), &b) in yrow.iter_mut().zip(xrow).zip(rrow) {
            let v = a + b;
            *yv = v;
            ss += v * v;
        }
        let inv = 1.0 / (ss / d as f32 + eps).sqrt();
        *s = inv;
        yrow.iter_mut().for_each(|v| *v *= inv);
    };
    if rows >= PAR_MIN_ROWS {
        y.par_chunks_mut(d).zip(rstd.par_iter_mut()).zip(x.par_chunks(d).zip(r.par_chunks(d))).for_each(body);
    } else {
        y.chunks_mut(d).zip(rstd.iter_mut()).zip(x.chunks(d).zip(r.chunks(d))).for_each(body);
    }
}

/// Gradient of `y = rmsnorm(s)` with respect to `s`: `ds = rstd * (dy - y * mean(dy * y))`.
pub fn rms_norm_bwd(dy: &[f32], y: &[f32], rstd: &[f32], dx: &mut [f32], d: usize) {
    let rows = y.len() / d;
    assert_eq!(dy.len(), y.len());
    assert_eq!(dx.len(), y.len());
    assert_eq!(rstd.len(), rows);
    let body = |((dxrow, &s), (dyrow, yrow)): ((&mut [f32], &f32), (&[f32], &[f32]))| {
        let dot: f32 = dyrow.iter().zip(yrow).map(|(a, b)| a * b).sum();
        let mean = dot / d as f32;
        for ((o, &g), &v) in dxrow.iter_mut().zip(dyrow).zip(yrow) {
            *o = s * (g - v * mean);
        }
    };
    if rows >= PAR_MIN_ROWS {
        dx.par_chunks_mut(d).zip(rstd.par_iter()).zip(dy.par_chunks(d).zip(y.par_chunks(d))).for_each(body);
    } else {
        dx.chunks_mut(d).zip(rstd.iter()).zip(dy.chunks(d).zip(y.chunks(d))).for_each(body);
    }
}
