//! SwiGLU and RoPE kernels against the CPU reference ops (GPU when present, else the CPU
//! emulation; skipped without either).
//!
//! Error bound: bf16 inputs are given to the reference as the same rounded values; the kernels
//! compute in f32 and round each output to bf16 once (|err| <= BF16_EPS |out|); expf/sin/cos
//! differences are ~1e-7 relative. Bound: 2 * BF16_EPS relative. SwiGLU's d gate and RoPE's
//! rotations can cancel to near zero, so those are judged against the RMS (floor 1).

mod kernel_common;
use hrm::backend::cpu::{rope, swiglu};
use hrm::backend::cuda::kernels;
use kernel_common::*;

fn check_swiglu(rows: usize, inter: usize, seed: u64) {
    let Some(dev) = device("kernels_swiglu") else {
        return;
    };
    let mut r = rng(seed);
    let gu = round_bf16(&randn(&mut r, rows * 2 * inter, 2.0));
    let gud = upload(&dev, &to_bf16(&gu));
    let mut outd = poisoned_bf16(&dev, rows * inter);
    kernels::swiglu_fwd(&dev, &gud, &mut outd, rows, inter).unwrap();
    let mut out = vec![0.0; rows * inter];
    swiglu::swiglu_fwd(&gu, &mut out, inter);
    assert_close("swiglu out", &from_bf16(&download(&dev, &outd)), &out, 2.0 * BF16_EPS, 0.01);

    let dout = round_bf16(&randn(&mut r, rows * inter, 1.0));
    let doutd = upload(&dev, &to_bf16(&dout));
    let mut dgud = poisoned_bf16(&dev, rows * 2 * inter);
    kernels::swiglu_bwd(&dev, &doutd, &gud, &mut dgud, rows, inter).unwrap();
    let mut dgu = vec![0.0; rows * 2 * inter];
    swiglu::swiglu_bwd(&dout, &gu, &mut dgu, inter);
    assert_close("swiglu dgate_up", &from_bf16(&download(&dev, &dgud)), &dgu, 2.0 * BF16_EPS, 0.01);
}

#[test]
fn swiglu_sizes() {
    check_swiglu(8, 1536, 11); // the Sudoku model's inter
    check_swiglu(1, 3, 12); // batch 1, tiny
    check_swiglu(13, 77, 13); // odd sizes
    check_swiglu(82, 1536, 14); // one Sudoku sequence (S = 82 rows), vector path
    check_swiglu(7, 8, 15); // one vector per row
    check_swiglu(5, 20, 16); // a multiple of 4, not of 8: scalar path
}

#[test]
fn swiglu_unaligned_rows_take_the_scalar_path() {
    // every buffer a view one element (2 bytes) into its allocation
    let Some(dev) = device("kernels_swiglu") else {
        return;
    };
    let (rows, inter) = (4usize, 64usize);
    let mut r = rng(17);
    let gu = round_bf16(&randn(&mut r, rows * 2 * inter + 1, 2.0));
    let gud = upload(&dev, &to_bf16(&gu));
    let mut outd = poisoned_bf16(&dev, rows * inter + 1);
    kernels::swiglu_fwd(&dev, &gud.slice(1..), &mut outd.slice_mut(1..), rows, inter).unwrap();
    let mut out = vec![0.0; rows * inter];
    swiglu::swiglu_fwd(&gu[1..], &mut out, inter);
    let got = from_bf16(&download(&dev, &outd));
    assert!(got[0].is_nan(), "the element before the view was written");
    assert_close("swiglu out (unaligned)", &got[1..], &out, 2.0 * BF16_EPS, 0.01);
    let dout = round_bf16(&randn(&mut r, rows * inter + 1, 1.0));
    let doutd = upload(&dev, &to_bf16(&dout));
    let mut dgud = poisoned_bf16(&dev, rows * 2 * inter + 1);
    kernels::swiglu_bwd(&dev, &doutd.slice(1..), &gud.slice(1..), &mut dgud.slice_mut(1..), rows, inter)
        .unwrap();
    let mut dgu = vec![0.0; rows * 2 * inter];
    swiglu::swiglu_bwd(&dout[1..], &gu[1..], &mut dgu, inter);
    let got = from_bf16(&download(&dev, &dgud));
    assert!(got[0].is_nan());
    assert_close("swiglu dgate_up (unaligned)", &got[1..], &dgu, 2.0 * BF16_EPS, 0.01);
}

fn check_rope(batch: usize, seq: usize, heads: usize, head_dim: usize, seed: u64) {
    let Some(dev) = device("kernels_rope") else {
        return;
    };
    let mut r = rng(seed);
    let tokens = batch * seq;
    let n = tokens * 3 * heads * head_dim;
    let (cos, sin) = rope::rope_tables(seq, head_dim, 10000.0);
    let (cd, sd) = (upload(&dev, &cos), upload(&dev, &sin));
    let qkv = round_bf16(&randn(&mut r, n, 1.0));
    let mut qd = upload(&dev, &to_bf16(&qkv));
    kernels::rope_fwd(&dev, &mut qd, &cd, &sd, tokens, seq, heads, head_dim).unwrap();
    let mut want = qkv.clone();
    rope::rope_fwd(&mut want, &cos, &sin, seq, heads, head_dim);
    let got = from_bf16(&download(&dev, &qd));
    assert_close("rope fwd", &got, &want, 2.0 * BF16_EPS, 0.01);
    // v is untouched, bit for bit
    let d = heads * head_dim;
    for t in 0..tokens {
        let row = t * 3 * d;
        assert_eq!(got[row + 2 * d..row + 3 * d], qkv[row + 2 * d..row + 3 * d]);
    }

    let dq = round_bf16(&randn(&mut r, n, 1.0));
    let mut dqd = upload(&dev, &to_bf16(&dq));
    kernels::rope_bwd(&dev, &mut dqd, &cd, &sd, tokens, seq, heads, head_dim).unwrap();
    let mut want = dq.clone();
    rope::rope_bwd(&mut want, &cos, &sin, seq, heads, head_dim);
    assert_close("rope bwd", &from_bf16(&download(&dev, &dqd)), &want, 2.0 * BF16_EPS, 0.01);
}

#[test]
fn rope_sizes() {
    check_rope(2, 82, 8, 64, 21); // Sudoku: S = 82, 8 heads of 64
    check_rope(1, 5, 1, 2, 22); // batch 1, smallest head
    check_rope(3, 7, 3, 10, 23); // odd sizes
    check_rope(2, 9, 3, 16, 24); // half = 8: one vector of 8 pairs per head half
    check_rope(1, 4, 2, 24, 25); // half = 12: scalar path
}
