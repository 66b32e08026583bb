//! Fused attention kernels (`kernels/attention.cu`) against the CPU reference
//! (`backend::cpu::attention`, f32), on the GPU when present, else under the CPU emulation;
//! skipped (with a message) without either.
//!
//! Error bound (the rule of the flash-attention tests): the kernel reads bf16 inputs, keeps
//! scores, softmax and sums in f32 and rounds each output once to bf16, so its error should be no
//! larger than that of the straightforward bf16 implementation of the same math. The test runs
//! that naive version on the CPU (bf16-rounded inputs; every matrix product accumulated in f32
//! and its result rounded to bf16, as a bf16 GEMM does: S, P, O, dP, dV, dQ, dK; the element-wise
//! softmax-backward steps rounded too), measures its largest absolute error against the f32
//! reference, and requires the kernel's largest absolute error on the same tensor to be at most
//! 2x that plus an absolute floor of 1e-5 (which matters only where the naive error is ~0, e.g.
//! seq 1, where the output is exactly v). The reference itself is f32 (errors ~1e-6, far below
//! bf16's 2^-8). The log-sum-exp is f32 end to end and is held to 1e-5 (1 + |lse|).
//! NaN-poisoned outputs make any element the kernels fail to write fail the test.

mod kernel_common;
use half::bf16;
use hrm::backend::cpu::attention as cpu;
use hrm::backend::cuda::CudaDevice;
use hrm::backend::cuda::attention::{AttentionScratch, attention_bwd, attention_fwd, uses_tensor_cores};
use kernel_common::*;

const FLOOR: f32 = 1e-5;

#[derive(Clone, Copy, Debug)]
struct Shape {
    batch: usize,
    seq: usize,
    heads: usize,
    hd: usize,
}

impl Shape {
    fn d(&self) -> usize {
        self.heads * self.hd
    }
    fn tokens(&self) -> usize {
        self.batch * self.seq
    }
}

fn rb(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}

/// The naive bf16 attention forward and backward (see the header): (out, dqkv).
fn naive_bf16(qkv: &[f32], dout: &[f32], sh: Shape) -> (Vec<f32>, Vec<f32>) {
    let (s, hd, d) = (sh.seq, sh.hd, sh.d());
    let scale = 1.0 / (hd as f32).sqrt();
    let mut out = vec![0.0f32; sh.tokens() * d];
    let mut dqkv = vec![0.0f32; sh.tokens() * 3 * d];
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    for b in 0..sh.batch {
        for h in 0..sh.heads {
            let row = |t: usize, off: usize| -> &[f32] {
                let base = (b * s + t) * 3 * d + off + h * hd;
                &qkv[base..base + hd]
            };
            let do_row =
                |t: usize| -> &[f32] { &dout[(b * s + t) * d + h * hd..(b * s + t) * d + (h + 1) * hd] };
            let mut p = vec![0.0f32; s * s];
            for i in 0..s {
                let sc: Vec<f32> = (0..s).map(|j| rb(scale * dot(row(i, 0), row(j, d)))).collect();
                let m = sc.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
                let e: Vec<f32> = sc.iter().map(|v| (v - m).exp()).collect();
                let sum: f32 = e.iter().sum();
                for j in 0..s {
                    p[i * s + j] = rb(e[j] / sum);
                }
                for c in 0..hd {
                    let o: f32 = (0..s).map(|j| p[i * s + j] * row(j, 2 * d)[c]).sum();
                    out[(b * s + i) * d + h * hd + c] = rb(o);
                }
            }
            let mut ds = vec![0.0f32; s * s];
            for i in 0..s {
                let dp: Vec<f32> = (0..s).map(|j| rb(dot(do_row(i), row(j, 2 * d)))).collect();
                let dsum = rb((0..s).map(|j| rb(dp[j] * p[i * s + j])).sum::<f32>());
                for j in 0..s {
                    ds[i * s + j] = rb(p[i * s + j] * rb(dp[j] - dsum));
                }
            }
            for t in 0..s {
                let base = (b * s + t) * 3 * d + h * hd;
                for c in 0..hd {
                    let dq: f32 = (0..s).map(|j| ds[t * s + j] * row(j, d)[c]).sum();
                    let dk: f32 = (0..s).map(|i| ds[i * s + t] * row(i, 0)[c]).sum();
                    let dv: f32 = (0..s).map(|i| p[i * s + t] * do_row(i)[c]).sum();
                    dqkv[base + c] = rb(scale * dq);
                    dqkv[base + d + c] = rb(scale * dk);
                    dqkv[base + 2 * d + c] = rb(dv);
                }
            }
        }
    }
    (out, dqkv)
}

fn rms(x: &[f32]) -> f32 {
    (x.iter().map(|v| v * v).sum::<f32>() / x.len().max(1) as f32).sqrt()
}

fn max_abs_err(got: &[f32], want: &[f32]) -> f32 {
    got.iter().zip(want).map(|(g, w)| (g - w).abs()).fold(0.0, f32::max)
}

/// `err(got) <= 2 err(naive) + FLOOR` (largest absolute errors against `want`); NaN or infinity
/// in `got` fails. Returns err(got) / (2 err(naive) + FLOOR), the fraction of the bound used.
fn check_vs_naive(what: &str, got: &[f32], naive: &[f32], want: &[f32]) -> Result<f32, String> {
    assert_eq!(got.len(), want.len());
    assert_eq!(naive.len(), want.len());
    if let Some(i) = got.iter().position(|v| !v.is_finite()) {
        return Err(format!("{what}[{i}] = {} (not finite)", got[i]));
    }
    let (e, en) = (max_abs_err(got, want), max_abs_err(naive, want));
    let bound = 2.0 * en + FLOOR;
    eprintln!("  {what}: max |err| kernel {e:.3e}, naive bf16 {en:.3e}, rms {:.3e}", rms(want));
    if e > bound {
        let i = got.iter().zip(want).position(|(g, w)| (g - w).abs() == e).unwrap();
        return Err(format!(
            "{what}: max |err| {e:e} (at {i}: got {}, want {}) > 2 x naive bf16 {en:e} + {FLOOR:e}",
            got[i], want[i]
        ));
    }
    Ok(e / bound)
}

/// The q, k and v column blocks of fused rows, each flattened.
fn split_qkv(x: &[f32], d: usize) -> [Vec<f32>; 3] {
    let part = |p: usize| x.chunks(3 * d).flat_map(|r| r[p * d..(p + 1) * d].to_vec()).collect();
    [part(0), part(1), part(2)]
}

struct Outputs {
    qkv: Vec<f32>,
    out_ref: Vec<f32>,
    out_naive: Vec<f32>,
    out_got: Vec<f32>,
    dqkv_ref: Vec<f32>,
    dqkv_naive: Vec<f32>,
    dqkv_got: Vec<f32>,
}

/// Runs both kernels and both CPU versions on fresh random inputs; also checks lse.
fn run(dev: &CudaDevice, sh: Shape, seed: u64, input_scale: f32) -> Outputs {
    let (t, d) = (sh.tokens(), sh.d());
    let mut r = rng(seed);
    let qkv = round_bf16(&randn(&mut r, t * 3 * d, input_scale));
    let dout = round_bf16(&randn(&mut r, t * d, 1.0));

    let mut out_ref = vec![0.0; t * d];
    let mut lse_ref = vec![0.0; sh.batch * sh.heads * sh.seq];
    cpu::attention_fwd(&qkv, &mut out_ref, &mut lse_ref, sh.batch, sh.seq, sh.heads, sh.hd);

    let qkv_d = upload(dev, &to_bf16(&qkv));
    let mut out_d = poisoned_bf16(dev, t * d);
    let mut lse_d = poisoned_f32(dev, lse_ref.len());
    attention_fwd(dev, &qkv_d, &mut out_d, &mut lse_d, sh.batch, sh.seq, sh.heads, sh.hd).unwrap();
    let out_got = from_bf16(&download(dev, &out_d));
    let lse_got = download(dev, &lse_d);
    let mut lse_worst = 0.0f32;
    for (i, (&g, &w)) in lse_got.iter().zip(&lse_ref).enumerate() {
        let bound = 1e-5 * (1.0 + w.abs());
        assert!(g.is_finite() && (g - w).abs() <= bound, "{sh:?} lse[{i}]: got {g}, want {w}");
        lse_worst = lse_worst.max((g - w).abs() / bound);
    }
    eprintln!("  lse: worst error / bound = {lse_worst:.3}");

    // Backward from the reference forward (out rounded to bf16, as the model stores it), so
    // the kernel, the reference and the naive version differentiate the same function.
    let out_in = round_bf16(&out_ref);
    let mut dqkv_ref = vec![0.0; t * 3 * d];
    cpu::attention_bwd(&qkv, &out_in, &lse_ref, &dout, &mut dqkv_ref, sh.batch, sh.seq, sh.heads, sh.hd);
    let (out_in_d, lse_in_d, dout_d) =
        (upload(dev, &to_bf16(&out_in)), upload(dev, &lse_ref), upload(dev, &to_bf16(&dout)));
    let mut dqkv_d = poisoned_bf16(dev, t * 3 * d);
    let mut scratch = AttentionScratch::new(dev, sh.batch, sh.heads, sh.seq).unwrap();
    attention_bwd(
        dev,
        &qkv_d,
        &out_in_d,
        &lse_in_d,
        &dout_d,
        &mut dqkv_d,
        &mut scratch,
        sh.batch,
        sh.seq,
        sh.heads,
        sh.hd,
    )
    .unwrap();
    let dqkv_got = from_bf16(&download(dev, &dqkv_d));
    let (out_naive, dqkv_naive) = naive_bf16(&qkv, &dout, sh);
    Outputs { qkv, out_ref, out_naive, out_got, dqkv_ref, dqkv_naive, dqkv_got }
}

/// Checks all four tensors; returns the largest fraction of the bound used.
fn check_all(o: &Outputs, sh: Shape) -> Result<f32, String> {
    let d = sh.d();
    let mut worst = check_vs_naive("out", &o.out_got, &o.out_naive, &o.out_ref)?;
    let (g, n, w) = (split_qkv(&o.dqkv_got, d), split_qkv(&o.dqkv_naive, d), split_qkv(&o.dqkv_ref, d));
    for (k, name) in ["dq", "dk", "dv"].iter().enumerate() {
        worst = worst.max(check_vs_naive(name, &g[k], &n[k], &w[k])?);
    }
    Ok(worst)
}

fn check(sh: Shape, seed: u64, input_scale: f32) {
    let Some(dev) = device("kernels_attention") else {
        return;
    };
    let o = run(&dev, sh, seed, input_scale);
    assert_eq!(o.qkv.len(), sh.tokens() * 3 * sh.d());
    match check_all(&o, sh) {
        Ok(worst) => eprintln!("{sh:?} (inputs x{input_scale}): worst error / bound = {worst:.3}"),
        Err(e) => panic!("{sh:?}: {e}"),
    }
}

#[test]
fn attention_tiny_model_shape() {
    check(Shape { batch: 3, seq: 82, heads: 4, hd: 16 }, 1, 1.0);
}

#[test]
fn attention_sudoku_head_shape() {
    check(Shape { batch: 2, seq: 82, heads: 8, hd: 64 }, 2, 1.0);
}

#[test]
fn attention_short_sequences() {
    check(Shape { batch: 2, seq: 1, heads: 2, hd: 64 }, 3, 1.0);
    check(Shape { batch: 1, seq: 33, heads: 3, hd: 64 }, 4, 1.0);
    check(Shape { batch: 2, seq: 50, heads: 1, hd: 24 }, 5, 1.0); // hd not a power of two
}

#[test]
fn attention_seq_256() {
    check(Shape { batch: 1, seq: 256, heads: 2, hd: 64 }, 6, 1.0);
}

/// Any sequence length: Maze-Hard and ARC-AGI have 900 cells plus the puzzle prefix (HRM 901,
/// TRM 916). Keys (queries in dK/dV) stream through shared memory in tiles with the online
/// softmax, each head's rows spread over several blocks; nothing is S x S. The tensor-core
/// kernels at hd 64 and 32, and the f32 kernels at hd 8, whose tiles are capped at 256 rows
/// (the dK/dV kernel's per-row statistics), at an odd length. Inputs x2 for peaked rows.
#[test]
fn attention_long_sequences() {
    for (i, sh) in [
        Shape { batch: 1, seq: 901, heads: 1, hd: 64 },
        Shape { batch: 1, seq: 916, heads: 2, hd: 32 },
        Shape { batch: 1, seq: 1031, heads: 1, hd: 8 },
    ]
    .into_iter()
    .enumerate()
    {
        check(sh, 40 + i as u64, 2.0);
    }
}

/// The longest length tested, 4,096 (one head of 16: the cost grows as S^2).
#[test]
fn attention_sequence_of_4096() {
    check(Shape { batch: 1, seq: 4096, heads: 1, hd: 16 }, 50, 1.0);
}

#[test]
fn attention_head_dim_128_several_tiles() {
    // hd 128 stages 32 rows per tile: 40 keys are two tiles, 256 keys eight; inputs x2 give
    // peaked softmax rows, so the online rescaling across tiles matters.
    check(Shape { batch: 2, seq: 40, heads: 2, hd: 128 }, 7, 1.0);
    check(Shape { batch: 1, seq: 256, heads: 1, hd: 128 }, 8, 2.0);
}

#[test]
fn attention_backward_is_deterministic() {
    let Some(dev) = device("kernels_attention") else {
        return;
    };
    let sh = Shape { batch: 1, seq: 82, heads: 2, hd: 32 };
    let (t, d) = (sh.tokens(), sh.d());
    let mut r = rng(9);
    let qkv = upload(&dev, &to_bf16(&randn(&mut r, t * 3 * d, 1.0)));
    let dout = upload(&dev, &to_bf16(&randn(&mut r, t * d, 1.0)));
    let mut out = poisoned_bf16(&dev, t * d);
    let mut lse = poisoned_f32(&dev, sh.heads * sh.seq);
    attention_fwd(&dev, &qkv, &mut out, &mut lse, sh.batch, sh.seq, sh.heads, sh.hd).unwrap();
    let mut scratch = AttentionScratch::new(&dev, sh.batch, sh.heads, sh.seq).unwrap();
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut dqkv = poisoned_bf16(&dev, t * 3 * d);
        attention_bwd(
            &dev,
            &qkv,
            &out,
            &lse,
            &dout,
            &mut dqkv,
            &mut scratch,
            sh.batch,
            sh.seq,
            sh.heads,
            sh.hd,
        )
        .unwrap();
        runs.push(download(&dev, &dqkv).iter().map(|v| v.to_bits()).collect::<Vec<u16>>());
    }
    assert_eq!(runs[0], runs[1], "two backward runs differ");
}

/// The tensor-core kernels (head dims 16, 32, 64, 128; 64 rows per block, keys and queries
/// padded to multiples of 16 in shared memory and masked) at shapes that exercise the padding:
/// a partial 16-row warp tile (17, 82, 100, 130, 200), a block whose last warps have no rows
/// (17, 82, 130), several key/query tiles in shared memory (hd 64: forward tile 160, backward
/// 96 rows, so 130 and 256 take two/three; hd 128: 80 and 16 rows), several row blocks per head
/// (130, 200, 256), and more (batch, head) pairs than one grid row.
#[test]
fn attention_tensor_core_padding_shapes() {
    for (i, sh) in [
        Shape { batch: 2, seq: 17, heads: 2, hd: 64 },
        Shape { batch: 1, seq: 130, heads: 2, hd: 64 },
        Shape { batch: 5, seq: 82, heads: 3, hd: 32 },
        Shape { batch: 1, seq: 200, heads: 1, hd: 32 },
        Shape { batch: 1, seq: 256, heads: 2, hd: 16 },
        Shape { batch: 1, seq: 100, heads: 1, hd: 128 },
    ]
    .into_iter()
    .enumerate()
    {
        assert!(uses_tensor_cores(sh.hd), "hd {} should take the tensor-core kernels", sh.hd);
        check(sh, 20 + i as u64, 1.0);
    }
}

/// Head dims without tensor-core kernels (multiples of 8, not in {16, 32, 64, 128}) keep the
/// f32 kernels.
#[test]
fn attention_f32_fallback_head_dims() {
    for (i, sh) in
        [Shape { batch: 2, seq: 82, heads: 2, hd: 48 }, Shape { batch: 1, seq: 40, heads: 3, hd: 8 }]
            .into_iter()
            .enumerate()
    {
        assert!(!uses_tensor_cores(sh.hd));
        check(sh, 30 + i as u64, 1.0);
    }
}

/// The bound is not vacuous: the same comparison rejects the kernel's own results with one
/// element moved by 10% of the tensor's RMS (the bound, 2x the naive bf16 error, is ~4-7% of
/// the RMS at these shapes), or set to NaN.
#[test]
fn attention_check_catches_a_planted_error() {
    let Some(dev) = device("kernels_attention") else {
        return;
    };
    let sh = Shape { batch: 1, seq: 82, heads: 2, hd: 64 };
    let o = run(&dev, sh, 10, 1.0);
    check_all(&o, sh).expect("unmodified kernel results pass");
    let d = sh.d();

    let mut bad = o.out_got.clone();
    let i = bad.len() / 2 + 3;
    bad[i] += 0.1 * rms(&o.out_ref);
    let e = check_vs_naive("out", &bad, &o.out_naive, &o.out_ref).expect_err("perturbed out passed");
    eprintln!("caught: {e}");

    // one element of dk (row 7, column 5)
    let mut bad = o.dqkv_got.clone();
    let dk_rms = rms(&split_qkv(&o.dqkv_ref, d)[1]);
    bad[7 * 3 * d + d + 5] -= 0.1 * dk_rms;
    let (g, n, w) = (split_qkv(&bad, d), split_qkv(&o.dqkv_naive, d), split_qkv(&o.dqkv_ref, d));
    let e = check_vs_naive("dk", &g[1], &n[1], &w[1]).expect_err("perturbed dk passed");
    eprintln!("caught: {e}");

    let mut bad = o.out_got.clone();
    bad[0] = f32::NAN;
    check_vs_naive("out", &bad, &o.out_naive, &o.out_ref).expect_err("NaN passed");
}

#[test]
fn attention_unsupported_shapes_are_errors() {
    let Some(dev) = device("kernels_attention") else {
        return;
    };
    let big = 300 * 3 * 136;
    let qkv = upload(&dev, &vec![bf16::ZERO; big]);
    let mut out = poisoned_bf16(&dev, big);
    let mut lse = poisoned_f32(&dev, big);
    let mut fwd =
        |b: usize, s: usize, h: usize, hd: usize| attention_fwd(&dev, &qkv, &mut out, &mut lse, b, s, h, hd);
    let too_long = hrm::backend::cuda::attention::MAX_SEQ + 1;
    let e = fwd(1, too_long, 1, 8).expect_err("seq past MAX_SEQ").to_string();
    assert!(e.contains(&format!("seq {too_long}")), "{e}");
    assert!(fwd(1, 0, 1, 64).is_err(), "seq 0");
    assert!(fwd(1, 16, 1, 12).is_err(), "head_dim 12");
    assert!(fwd(1, 16, 1, 136).is_err(), "head_dim 136");
    assert!(fwd(1, 16, 0, 64).is_err(), "heads 0");
    assert!(fwd(2, 256, 2, 128).is_err(), "buffers too small");
    fwd(1, 16, 1, 64).unwrap();
    fwd(0, 16, 1, 64).unwrap(); // empty batch: nothing to do

    // backward: scratch made for fewer rows than the call needs
    let sh = Shape { batch: 2, seq: 16, heads: 2, hd: 32 };
    let (t, d) = (sh.tokens(), sh.d());
    let x = upload(&dev, &vec![bf16::ZERO; t * 3 * d]);
    let l = upload(&dev, &vec![0.0f32; sh.batch * sh.heads * sh.seq]);
    let mut dqkv = poisoned_bf16(&dev, t * 3 * d);
    let mut small = AttentionScratch::new(&dev, 1, sh.heads, sh.seq).unwrap();
    assert!(
        attention_bwd(&dev, &x, &x, &l, &x, &mut dqkv, &mut small, sh.batch, sh.seq, sh.heads, sh.hd)
            .is_err()
    );
    let mut scratch = AttentionScratch::new(&dev, sh.batch, sh.heads, sh.seq).unwrap();
    attention_bwd(&dev, &x, &x, &l, &x, &mut dqkv, &mut scratch, sh.batch, sh.seq, sh.heads, sh.hd).unwrap();
    // a misaligned view (odd element offset) is refused, not a misaligned load
    let view = x.slice(1..);
    assert!(
        attention_bwd(&dev, &view, &x, &l, &x, &mut dqkv, &mut scratch, 1, sh.seq, sh.heads, sh.hd).is_err()
    );
}

/// Largest |got - want| / (3 * 2^-8 * (|want| + rms(want))), NaN counting as infinite: the
/// fused RoPE attention against the composed ops. Both see the same bf16-rounded rotated q and k
/// (the fused kernels round the rotation to bf16 exactly as the rope kernel stores it), so the
/// forward agrees to the last bit up to FMA contraction; dq and dk differ by the composed
/// version's extra bf16 rounding before rope_bwd (its rotation mixes two rounded values): a few
/// bf16 units of the magnitude, hence 3 * 2^-8 relative to |want| plus the tensor's RMS.
fn rope_rel_err(got: &[f32], want: &[f32]) -> f32 {
    let scale = rms(want);
    got.iter()
        .zip(want)
        .map(
            |(&g, &w)| {
                if g.is_finite() { (g - w).abs() / (3.0 / 256.0 * (w.abs() + scale)) } else { f32::INFINITY }
            },
        )
        .fold(0.0, f32::max)
}

/// `attention_rope_fwd/bwd` (RoPE inside the tensor-core kernels) against the composed
/// `rope_fwd` + `attention_fwd` and `attention_bwd` + `rope_bwd`, which stay the reference.
#[test]
fn attention_fused_rope_matches_composed_ops() {
    use hrm::backend::cpu::rope::rope_tables;
    use hrm::backend::cuda::attention::{attention_rope_bwd, attention_rope_fwd};
    use hrm::backend::cuda::kernels::{rope_bwd, rope_fwd};
    let Some(dev) = device("kernels_attention") else {
        return;
    };
    for (i, sh) in [
        Shape { batch: 2, seq: 82, heads: 2, hd: 64 },
        Shape { batch: 1, seq: 17, heads: 3, hd: 32 },
        Shape { batch: 1, seq: 130, heads: 1, hd: 128 },
        Shape { batch: 1, seq: 901, heads: 1, hd: 64 }, // HRM Maze / ARC: positions 0..900
    ]
    .into_iter()
    .enumerate()
    {
        let (t, d) = (sh.tokens(), sh.d());
        let mut r = rng(40 + i as u64);
        let qkv = to_bf16(&randn(&mut r, t * 3 * d, 1.0));
        let dout = to_bf16(&randn(&mut r, t * d, 1.0));
        let (cos, sin) = rope_tables(sh.seq, sh.hd, 10000.0);
        let (cos_d, sin_d) = (upload(&dev, &cos), upload(&dev, &sin));
        let (qkv_d, dout_d) = (upload(&dev, &qkv), upload(&dev, &dout));
        let n_stat = sh.batch * sh.heads * sh.seq;
        let mut scratch = AttentionScratch::new(&dev, sh.batch, sh.heads, sh.seq).unwrap();

        // composed
        let mut roped = upload(&dev, &qkv);
        rope_fwd(&dev, &mut roped, &cos_d, &sin_d, t, sh.seq, sh.heads, sh.hd).unwrap();
        let (mut out_c, mut lse_c) = (poisoned_bf16(&dev, t * d), poisoned_f32(&dev, n_stat));
        attention_fwd(&dev, &roped, &mut out_c, &mut lse_c, sh.batch, sh.seq, sh.heads, sh.hd).unwrap();
        let mut dqkv_c = poisoned_bf16(&dev, t * 3 * d);
        attention_bwd(
            &dev,
            &roped,
            &out_c,
            &lse_c,
            &dout_d,
            &mut dqkv_c,
            &mut scratch,
            sh.batch,
            sh.seq,
            sh.heads,
            sh.hd,
        )
        .unwrap();
        let unrotated = split_qkv(&from_bf16(&download(&dev, &dqkv_c)), d);
        rope_bwd(&dev, &mut dqkv_c, &cos_d, &sin_d, t, sh.seq, sh.heads, sh.hd).unwrap();

        // fused (the backward from the composed forward's out and lse: the same function)
        let (mut out_f, mut lse_f) = (poisoned_bf16(&dev, t * d), poisoned_f32(&dev, n_stat));
        attention_rope_fwd(
            &dev, &qkv_d, &cos_d, &sin_d, &mut out_f, &mut lse_f, sh.batch, sh.seq, sh.heads, sh.hd,
        )
        .unwrap();
        let mut dqkv_f = poisoned_bf16(&dev, t * 3 * d);
        attention_rope_bwd(
            &dev,
            &qkv_d,
            &cos_d,
            &sin_d,
            &out_c,
            &lse_c,
            &dout_d,
            &mut dqkv_f,
            &mut scratch,
            sh.batch,
            sh.seq,
            sh.heads,
            sh.hd,
        )
        .unwrap();
        assert_eq!(download(&dev, &qkv_d), qkv, "{sh:?}: the fused op modified qkv");

        let out_c = from_bf16(&download(&dev, &out_c));
        let out_f = from_bf16(&download(&dev, &out_f));
        let (lse_c, lse_f) = (download(&dev, &lse_c), download(&dev, &lse_f));
        let lse_err = lse_f
            .iter()
            .zip(&lse_c)
            .map(
                |(&f, &c)| {
                    if f.is_finite() { (f - c).abs() / (1e-5 * (1.0 + c.abs())) } else { f32::INFINITY }
                },
            )
            .fold(0.0, f32::max);
        assert!(lse_err <= 1.0, "{sh:?}: lse error {lse_err} x 1e-5 (1 + |lse|)");
        let e_out = rope_rel_err(&out_f, &out_c);
        assert!(e_out <= 1.0, "{sh:?}: fused out error {e_out} x the bound");
        let (gf, gc) = (from_bf16(&download(&dev, &dqkv_f)), from_bf16(&download(&dev, &dqkv_c)));
        let (gf, gc) = (split_qkv(&gf, d), split_qkv(&gc, d));
        for (k, name) in ["dq", "dk", "dv"].iter().enumerate() {
            let e = rope_rel_err(&gf[k], &gc[k]);
            assert!(e <= 1.0, "{sh:?}: fused {name} error {e} x the bound");
        }
        // ... and to the backward rotation: dq, dk not rotated back fail it
        for k in 0..2 {
            let e = rope_rel_err(&gf[k], &unrotated[k]);
            assert!(e > 3.0, "{sh:?}: gradient {k} without rope_bwd passed the check ({e})");
        }
        // the comparison is sensitive to RoPE: plain attention (no rotation) fails it
        let (mut out_p, mut lse_p) = (poisoned_bf16(&dev, t * d), poisoned_f32(&dev, n_stat));
        attention_fwd(&dev, &qkv_d, &mut out_p, &mut lse_p, sh.batch, sh.seq, sh.heads, sh.hd).unwrap();
        let e_plain = rope_rel_err(&from_bf16(&download(&dev, &out_p)), &out_c);
        assert!(e_plain > 3.0, "{sh:?}: attention without RoPE passed the fused-RoPE check ({e_plain})");
        eprintln!(
            "{sh:?}: fused RoPE out {e_out:.3}, lse {lse_err:.3}; without RoPE {e_plain:.1} x the bound"
        );
    }
    // head dims without tensor-core kernels refuse the fused op (the backend composes instead)
    let qkv = upload(&dev, &vec![bf16::ZERO; 16 * 3 * 48]);
    let (cos, sin) = (upload(&dev, &vec![1.0f32; 16 * 48]), upload(&dev, &vec![0.0f32; 16 * 48]));
    let (mut out, mut lse) = (poisoned_bf16(&dev, 16 * 48), poisoned_f32(&dev, 16));
    assert!(attention_rope_fwd(&dev, &qkv, &cos, &sin, &mut out, &mut lse, 1, 16, 1, 48).is_err());
}
