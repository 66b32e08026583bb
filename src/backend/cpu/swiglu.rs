//! SwiGLU on the fused `gate_up` projection: row = [gate | up], `out = silu(gate) * up`.

use super::simd::{multiversion, sigmoid};
use rayon::prelude::*;

multiversion! {
    fn fwd_rows(o16: &mut [f32], gu16: &[f32], inter: usize) {
        for (orow, gu) in o16.chunks_mut(inter).zip(gu16.chunks(2 * inter)) {
            let (g, u) = gu.split_at(inter);
            for ((o, &gv), &uv) in orow.iter_mut().zip(g).zip(u) {
                *o = gv * sigmoid(gv) * uv;
            }
        }
    }
}

multiversion! {
    fn bwd_rows(dgu16: &mut [f32], gu16: &[f32], do16: &[f32], inter: usize) {
        for ((dgu, gu), dorow) in dgu16.chunks_mut(2 * inter).zip(gu16.chunks(2 * inter)).zip(do16.chunks(inter)) {
            let (g, u) = gu.split_at(inter);
            let (dg, du) = dgu.split_at_mut(inter);
            let (g, u, dorow) = (&g[..inter], &u[..inter], &dorow[..inter]);
            let (dg, du) = (&mut dg[..inter], &mut du[..inter]);
            for i in 0..inter {
                let s = sigmoid(g[i]);
                let silu = g[i] * s;
                du[i] = dorow[i] * silu;
                dg[i] = dorow[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
            }
        }
    }
}

pub fn swiglu_fwd(gate_up: &[f32], out: &mut [f32], inter: usize) {
    let rows = out.len() / inter;
    assert_eq!(gate_up.len(), rows * 2 * inter);
    assert_eq!(out.len(), rows * inter);
    out.par_chunks_mut(inter.max(1) * 16)
        .zip(gate_up.par_chunks(2 * inter * 16))
        .for_each(|(o16, gu16)| fwd_rows(o16, gu16, inter));
}

/// `d gate = dout * up * silu'(gate)`, `d up = dout * silu(gate)` (overwrites dgate_up).
pub fn swiglu_bwd(dout: &[f32], gate_up: &[f32], dgate_up: &mut [f32], inter: usize) {
    let rows = dout.len() / inter;
    assert_eq!(gate_up.len(), rows * 2 * inter);
    assert_eq!(dgate_up.len(), gate_up.len());
    dgate_up
        .par_chunks_mut(2 * inter * 16)
        .zip(gate_up.par_chunks(2 * inter * 16).zip(dout.par_chunks(inter * 16)))
        .for_each(|(dgu16, (gu16, do16))| bwd_rows(dgu16, gu16, do16, inter));
}
