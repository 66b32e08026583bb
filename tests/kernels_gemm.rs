//! cuBLASLt bf16 GEMM wrapper (`backend::cuda::gemm`) against an f64 reference on the same
//! bf16-rounded operands (GPU when present, else the cuBLASLt stand-in of the CPU emulation,
//! which also multiplies bf16 operands and accumulates in f32).
//!
//! Bound, per element: f32 accumulation of k exact products errs by at most
//! (k + 2) * 2^-24 * sum_p |a_ip b_pj| (the classic recursive-summation bound; any summation
//! order cuBLASLt picks satisfies it), plus, for a bf16 output, one rounding: BF16_EPS |c|.

mod kernel_common;
use half::bf16;
use hrm::backend::cuda::gemm::GemmOutput;
use kernel_common::*;

/// Row-major reference: C = alpha * op(A) op(B) + beta * C0, and sum |a b| per element.
#[allow(clippy::too_many_arguments)]
fn reference(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    at: bool,
    b: &[f32],
    bt: bool,
    c0: &[f32],
    alpha: f32,
    beta: f32,
) -> (Vec<f32>, Vec<f64>) {
    let mut c = vec![0.0f32; m * n];
    let mut mag = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut s, mut sa) = (0.0f64, 0.0f64);
            for p in 0..k {
                let av = if at { a[p * m + i] } else { a[i * k + p] } as f64;
                let bv = if bt { b[j * k + p] } else { b[p * n + j] } as f64;
                s += av * bv;
                sa += (av * bv).abs();
            }
            c[i * n + j] = (alpha as f64 * s + beta as f64 * c0[i * n + j] as f64) as f32;
            mag[i * n + j] = alpha.abs() as f64 * sa + (beta as f64 * c0[i * n + j] as f64).abs();
        }
    }
    (c, mag)
}

#[allow(clippy::too_many_arguments)]
fn check<C: GemmOutput + Copy + Default>(
    m: usize,
    n: usize,
    k: usize,
    at: bool,
    bt: bool,
    alpha: f32,
    beta: f32,
    seed: u64,
    to: fn(&[f32]) -> Vec<C>,
    from: fn(&[C]) -> Vec<f32>,
    out_eps: f32,
) {
    let Some(dev) = device("kernels_gemm") else {
        return;
    };
    let mut r = rng(seed);
    let a = round_bf16(&randn(&mut r, m * k, 1.0));
    let b = round_bf16(&randn(&mut r, k * n, 1.0));
    let c0 = from(&to(&randn(&mut r, m * n, 1.0)));
    let (ad, bd) = (upload(&dev, &to_bf16(&a)), upload(&dev, &to_bf16(&b)));
    let mut cd = upload(&dev, &to(&c0));
    let gemm = dev.gemm().unwrap();
    gemm.matmul(m, n, k, &ad, at, &bd, bt, &mut cd, alpha, beta).unwrap();
    let got = from(&download(&dev, &cd));
    let (want, mag) = reference(m, n, k, &a, at, &b, bt, &c0, alpha, beta);
    let unit = 2f64.powi(-24);
    for i in 0..m * n {
        let bound = (k as f64 + 2.0) * unit * mag[i] + out_eps as f64 * want[i].abs() as f64;
        let err = (got[i] - want[i]).abs() as f64;
        assert!(
            got[i].is_finite() && err <= bound,
            "{m}x{n}x{k} at={at} bt={bt}: C[{i}] = {} want {} (err {err:e} > {bound:e})",
            got[i],
            want[i]
        );
    }
}

fn bf16_out(x: &[f32]) -> Vec<bf16> {
    to_bf16(x)
}
fn bf16_in(x: &[bf16]) -> Vec<f32> {
    from_bf16(x)
}
fn f32_id(x: &[f32]) -> Vec<f32> {
    x.to_vec()
}

#[test]
fn linear_forward_bf16_out() {
    // y[rows, out] = x[rows, in] W[out, in]^T
    check::<bf16>(37, 96, 200, false, true, 1.0, 0.0, 51, bf16_out, bf16_in, BF16_EPS);
    check::<bf16>(1, 11, 64, false, true, 1.0, 0.0, 52, bf16_out, bf16_in, BF16_EPS);
}

#[test]
fn linear_backward_input_and_weight() {
    // dx[rows, in] = dy[rows, out] W[out, in]
    check::<bf16>(29, 40, 33, false, false, 1.0, 0.0, 53, bf16_out, bf16_in, BF16_EPS);
    // dW[out, in] += dy^T[out, rows] x[rows, in], f32 accumulate into an existing gradient
    check::<f32>(24, 31, 45, true, false, 1.0, 1.0, 54, f32_id, f32_id, 0.0);
    // both transposed, scaled
    check::<f32>(7, 5, 3, true, true, 0.5, -2.0, 55, f32_id, f32_id, 0.0);
}

#[test]
fn plans_are_cached_per_shape() {
    let Some(dev) = device("kernels_gemm") else {
        return;
    };
    let gemm = dev.gemm().unwrap();
    let a = upload(&dev, &[bf16::ONE; 6 * 10]);
    let b = upload(&dev, &[bf16::ONE; 10 * 9]);
    let mut c = upload(&dev, &[0.0f32; 6 * 9]);
    gemm.matmul(6, 9, 10, &a, false, &b, false, &mut c, 1.0, 0.0).unwrap();
    let before = gemm.cached_plans();
    for _ in 0..3 {
        gemm.matmul(6, 9, 10, &a, false, &b, false, &mut c, 1.0, 0.0).unwrap();
    }
    assert_eq!(gemm.cached_plans(), before, "same shape must reuse its plan");
    gemm.matmul(6, 9, 5, &a, false, &b, false, &mut c, 1.0, 0.0).unwrap();
    assert!(gemm.cached_plans() > before, "a new shape gets a plan");
    assert!(download(&dev, &c).iter().all(|&v| v == 5.0));
    // too-small buffers are refused before any device call
    assert!(gemm.matmul(7, 9, 10, &a, false, &b, false, &mut c, 1.0, 0.0).is_err());
}
