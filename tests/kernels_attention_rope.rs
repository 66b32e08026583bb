//! The fused RoPE + attention op of the `Backend` trait (`attention_rope_fwd/bwd`: attention of
//! the rotated q and k, gradient with respect to the un-rotated qkv) on every backend: the
//! default (rope on a copy, attention, rope_bwd) is the reference, the CUDA backend's fused
//! tensor-core kernels (GPU, else the CPU emulation; skipped without either) must match it.
//!
//! Bounds: (1) CUDA fused vs CUDA composed: both see the same bf16 rotated q and k, so they
//! differ only by the composed backward's extra bf16 rounding of dq, dk before rope_bwd: at most
//! 3 * 2^-8 * (|x| + rms) element-wise. (2) CUDA fused vs the f32 CPU reference: the
//! backend-parity rule, at most 2x the error of the bf16-simulating CPU backend (`CpuBf16`, the
//! same composed ops with bf16 storage) plus 1e-3 of the RMS.

use hrm::backend::cpu::Cpu;
use hrm::backend::cpu::bf16::CpuBf16;
use hrm::backend::cpu::rope::rope_tables;
use hrm::backend::cuda::{Cuda, CudaDevice};
use hrm::backend::{Backend, attention_rope_bwd_composed, attention_rope_fwd_composed};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[derive(Clone, Copy, Debug)]
struct Shape {
    batch: usize,
    seq: usize,
    heads: usize,
    hd: usize,
}

/// (out, lse, dqkv) on the host, by the fused trait methods or the composed functions.
fn run<B: Backend>(be: &B, sh: Shape, fused: bool, seed: u64) -> [Vec<f32>; 3] {
    let d = sh.heads * sh.hd;
    let t = sh.batch * sh.seq;
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut randv = |n: usize| -> Vec<f32> {
        // bf16-exact inputs, so every backend starts from the same values
        (0..n).map(|_| half::bf16::from_f32(r.gen_range(-1.7f32..1.7)).to_f32()).collect()
    };
    let (qkv_h, dout_h) = (randv(t * 3 * d), randv(t * d));
    let (cos_h, sin_h) = rope_tables(sh.seq, sh.hd, 10000.0);
    let (qkv, dout) = (be.upload_act(&qkv_h), be.upload_act(&dout_h));
    let (cos, sin) = (be.upload_f32(&cos_h), be.upload_f32(&sin_h));
    let mut out = be.upload_act(&vec![f32::NAN; t * d]);
    let mut lse = be.upload_f32(&vec![f32::NAN; sh.batch * sh.heads * sh.seq]);
    let mut dqkv = be.upload_act(&vec![f32::NAN; t * 3 * d]);
    let (b, s, h, hd) = (sh.batch, sh.seq, sh.heads, sh.hd);
    if fused {
        be.attention_rope_fwd(&qkv, &cos, &sin, &mut out, &mut lse, b, s, h, hd);
        be.attention_rope_bwd(&qkv, &cos, &sin, &out, &lse, &dout, &mut dqkv, b, s, h, hd);
    } else {
        attention_rope_fwd_composed(be, &qkv, &cos, &sin, &mut out, &mut lse, b, s, h, hd);
        attention_rope_bwd_composed(be, &qkv, &cos, &sin, &out, &lse, &dout, &mut dqkv, b, s, h, hd);
    }
    be.check().unwrap();
    assert_eq!(be.download_act(&qkv), qkv_h, "{sh:?}: qkv was modified");
    [be.download_act(&out), be.download_f32(&lse), be.download_act(&dqkv)]
}

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt() as f32
}

fn max_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| if g.is_finite() { (g - w).abs() } else { f32::INFINITY })
        .fold(0.0, f32::max)
}

const SHAPES: [Shape; 3] = [
    Shape { batch: 2, seq: 82, heads: 2, hd: 64 },
    Shape { batch: 1, seq: 33, heads: 2, hd: 32 },
    Shape { batch: 1, seq: 20, heads: 2, hd: 48 }, // no tensor-core kernel: composed on CUDA too
];

#[test]
fn cpu_default_is_the_composition() {
    for (i, sh) in SHAPES.into_iter().enumerate() {
        assert_eq!(run(&Cpu, sh, true, i as u64), run(&Cpu, sh, false, i as u64), "{sh:?} f32");
        assert_eq!(run(&CpuBf16, sh, true, i as u64), run(&CpuBf16, sh, false, i as u64), "{sh:?} bf16");
    }
}

#[test]
fn cuda_fused_matches_composed_and_the_reference() {
    let Some(dev) = CudaDevice::for_tests("kernels_attention_rope") else {
        return;
    };
    let cuda = Cuda::new(dev);
    for (i, sh) in SHAPES.into_iter().enumerate() {
        let seed = 100 + i as u64;
        let fused = run(&cuda, sh, true, seed);
        let composed = run(&cuda, sh, false, seed);
        let reference = run(&Cpu, sh, false, seed);
        let sim = run(&CpuBf16, sh, false, seed);
        for (k, name) in ["out", "lse", "dqkv"].iter().enumerate() {
            let scale = rms(&composed[k]);
            let rel = fused[k]
                .iter()
                .zip(&composed[k])
                .map(|(&f, &c)| {
                    if f.is_finite() {
                        (f - c).abs() / (3.0 / 256.0 * (c.abs() + scale))
                    } else {
                        f32::INFINITY
                    }
                })
                .fold(0.0, f32::max);
            assert!(rel <= 1.0, "{sh:?} {name}: fused vs composed {rel} x the bound");
            let (e, e_sim) = (max_err(&fused[k], &reference[k]), max_err(&sim[k], &reference[k]));
            let bound = 2.0 * e_sim + 1e-3 * rms(&reference[k]);
            assert!(
                e <= bound,
                "{sh:?} {name}: error {e:e} vs f32 reference > {bound:e} (bf16 CPU {e_sim:e})"
            );
            eprintln!("{sh:?} {name}: vs composed {rel:.3}, vs reference {e:.2e} (bound {bound:.2e})");
        }
    }
}
