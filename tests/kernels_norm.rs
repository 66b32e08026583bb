//! Fused residual add + RMSNorm kernels against the CPU reference (`backend::cpu::norm`), on the
//! GPU when present, else under the CPU emulation; skipped (with a message) without either.
//!
//! Error bound: the kernel reads bf16 inputs (the reference gets the same rounded values in
//! f32), computes in f32 and rounds the output to bf16 once: |err| <= BF16_EPS |y| from the
//! output rounding, plus f32 differences (summation order, rsqrt) orders of magnitude smaller.
//! We allow 2 * BF16_EPS (~7.8e-3 relative: one rounding plus
//! the same again as margin for the f32 differences). The backward's `dy - y * mean(dy y)` cancels, so
//! near-zero elements are judged against the row RMS (floor 1).

mod kernel_common;
use half::bf16;
use hrm::backend::cpu::norm;
use hrm::backend::cuda::kernels;
use kernel_common::*;

fn check(rows: usize, d: usize, seed: u64) {
    let Some(dev) = device("kernels_norm") else {
        return;
    };
    let mut r = rng(seed);
    let x = round_bf16(&randn(&mut r, rows * d, 1.0));
    let res = round_bf16(&randn(&mut r, rows * d, 0.5));
    let (xd, rd) = (upload(&dev, &to_bf16(&x)), upload(&dev, &to_bf16(&res)));
    let mut yd = poisoned_bf16(&dev, rows * d);
    let mut rstd_d = poisoned_f32(&dev, rows);
    kernels::add_rms_norm_fwd(&dev, &xd, &rd, &mut yd, &mut rstd_d, rows, (d, d), 1e-5).unwrap();
    let (mut y, mut rstd) = (vec![0.0; rows * d], vec![0.0; rows]);
    norm::add_rms_norm_fwd(&x, &res, &mut y, &mut rstd, d, 1e-5);
    let y_got = from_bf16(&download(&dev, &yd));
    assert_close("y", &y_got, &y, 2.0 * BF16_EPS, 0.0);
    // rstd is f32 end to end: far below 1e-3 (rsqrtf on the GPU is within 2 ulp).
    assert_close("rstd", &download(&dev, &rstd_d), &rstd, 1e-6, 0.0);

    // backward, from the kernel's own (bf16) y
    let dy = round_bf16(&randn(&mut r, rows * d, 1.0));
    let dyd = upload(&dev, &to_bf16(&dy));
    let mut dxd = poisoned_bf16(&dev, rows * d);
    kernels::rms_norm_bwd(&dev, &dyd, &yd, &rstd_d, &mut dxd, rows, (d, d)).unwrap();
    let mut dx = vec![0.0; rows * d];
    norm::rms_norm_bwd(&dy, &y_got, &download(&dev, &rstd_d), &mut dx, d);
    let dx_got = from_bf16(&download(&dev, &dxd));
    assert_close("dx", &dx_got, &dx, 2.0 * BF16_EPS, 1.0);
}

#[test]
fn norm_hidden_512() {
    check(16, 512, 1);
}

#[test]
fn norm_odd_sizes() {
    check(1, 7, 2); // batch 1, fewer columns than threads
    check(37, 200, 3); // not a multiple of the block
    check(5, 1000, 4); // several columns per thread
}

#[test]
fn norm_output_is_poison_free_for_zero_rows() {
    let Some(dev) = device("kernels_norm") else {
        return;
    };
    let x = upload(&dev, &[bf16::ZERO; 4]);
    let mut y = poisoned_bf16(&dev, 4);
    let mut rstd = poisoned_f32(&dev, 1);
    // zero rows: nothing launched, nothing written
    kernels::add_rms_norm_fwd(&dev, &x, &x, &mut y, &mut rstd, 0, (4, 4), 1e-5).unwrap();
    assert!(from_bf16(&download(&dev, &y)).iter().all(|v| v.is_nan()));
}

#[test]
fn norm_vector_width_edges() {
    // the register path takes d % 8 == 0 and d <= 1024; everything else the scalar path
    check(9, 1024, 5); // largest register-path row (4 vectors of 8 per lane)
    check(3, 1030, 6); // above 1024 and not a multiple of 8
    check(2, 2048, 7); // above 1024, a multiple of 8
    check(11, 8, 8); // one vector per row, most lanes idle
    check(10, 516, 9); // a multiple of 4, not of 8
}

#[test]
fn norm_unaligned_rows_take_the_scalar_path() {
    // views starting one element (2 bytes) into their buffers: no 16-byte vector access allowed
    let Some(dev) = device("kernels_norm") else {
        return;
    };
    let (rows, d) = (6usize, 512usize);
    let mut r = rng(10);
    let x = round_bf16(&randn(&mut r, rows * d + 1, 1.0));
    let res = round_bf16(&randn(&mut r, rows * d + 1, 0.5));
    let (xd, rd) = (upload(&dev, &to_bf16(&x)), upload(&dev, &to_bf16(&res)));
    let mut yd = poisoned_bf16(&dev, rows * d + 1);
    let mut rstd_d = poisoned_f32(&dev, rows);
    {
        let (xv, rv) = (xd.slice(1..), rd.slice(1..));
        let mut yv = yd.slice_mut(1..);
        kernels::add_rms_norm_fwd(&dev, &xv, &rv, &mut yv, &mut rstd_d, rows, (d, d), 1e-5).unwrap();
    }
    let (mut y, mut rstd) = (vec![0.0; rows * d], vec![0.0; rows]);
    norm::add_rms_norm_fwd(&x[1..], &res[1..], &mut y, &mut rstd, d, 1e-5);
    let y_got = from_bf16(&download(&dev, &yd));
    assert!(y_got[0].is_nan(), "the element before the view was written");
    assert_close("y (unaligned)", &y_got[1..], &y, 2.0 * BF16_EPS, 0.0);
    assert_close("rstd (unaligned)", &download(&dev, &rstd_d), &rstd, 1e-6, 0.0);
    let dy = round_bf16(&randn(&mut r, rows * d + 1, 1.0));
    let dyd = upload(&dev, &to_bf16(&dy));
    let mut dxd = poisoned_bf16(&dev, rows * d + 1);
    {
        let (dyv, yv) = (dyd.slice(1..), yd.slice(1..));
        let mut dxv = dxd.slice_mut(1..);
        kernels::rms_norm_bwd(&dev, &dyv, &yv, &rstd_d, &mut dxv, rows, (d, d)).unwrap();
    }
    let mut dx = vec![0.0; rows * d];
    norm::rms_norm_bwd(&dy[1..], &y_got[1..], &download(&dev, &rstd_d), &mut dx, d);
    let dx_got = from_bf16(&download(&dev, &dxd));
    assert!(dx_got[0].is_nan());
    assert_close("dx (unaligned)", &dx_got[1..], &dx, 2.0 * BF16_EPS, 1.0);
}

/// TRM's norm over the sequence on rows padded with zeros (`count` real entries in rows of
/// `ld`): the real entries as the CPU norm of the unpadded rows, by the bound above, and the
/// pads exactly 0 (the outputs are poisoned first).
fn check_padded(rows: usize, count: usize, ld: usize, seed: u64) {
    let Some(dev) = device("kernels_norm") else {
        return;
    };
    let mut r = rng(seed);
    let pad = |v: &[f32]| -> Vec<f32> {
        v.chunks(count)
            .flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(0.0, ld - count)))
            .collect()
    };
    let real = |v: &[f32]| -> Vec<f32> { v.chunks(ld).flat_map(|row| row[..count].to_vec()).collect() };
    let pads = |v: &[f32]| -> Vec<f32> { v.chunks(ld).flat_map(|row| row[count..].to_vec()).collect() };
    let x = round_bf16(&randn(&mut r, rows * count, 1.0));
    let res = round_bf16(&randn(&mut r, rows * count, 0.5));
    let (xd, rd) = (upload(&dev, &to_bf16(&pad(&x))), upload(&dev, &to_bf16(&pad(&res))));
    let mut yd = poisoned_bf16(&dev, rows * ld);
    let mut rstd_d = poisoned_f32(&dev, rows);
    kernels::add_rms_norm_fwd(&dev, &xd, &rd, &mut yd, &mut rstd_d, rows, (ld, count), 1e-5).unwrap();
    let (mut y, mut rstd) = (vec![0.0; rows * count], vec![0.0; rows]);
    norm::add_rms_norm_fwd(&x, &res, &mut y, &mut rstd, count, 1e-5);
    let y_got = from_bf16(&download(&dev, &yd));
    assert_close("y (padded)", &real(&y_got), &y, 2.0 * BF16_EPS, 0.0);
    assert_close("rstd (padded)", &download(&dev, &rstd_d), &rstd, 1e-6, 0.0);
    assert!(pads(&y_got).iter().all(|v| v.to_bits() == 0), "y: a pad is not +0");

    let dy = round_bf16(&randn(&mut r, rows * count, 1.0));
    let dyd = upload(&dev, &to_bf16(&pad(&dy)));
    let mut dxd = poisoned_bf16(&dev, rows * ld);
    kernels::rms_norm_bwd(&dev, &dyd, &yd, &rstd_d, &mut dxd, rows, (ld, count)).unwrap();
    let mut dx = vec![0.0; rows * count];
    norm::rms_norm_bwd(&dy, &real(&y_got), &download(&dev, &rstd_d), &mut dx, count);
    let dx_got = from_bf16(&download(&dev, &dxd));
    assert_close("dx (padded)", &real(&dx_got), &dx, 2.0 * BF16_EPS, 1.0);
    assert!(pads(&dx_got).iter().all(|v| *v == 0.0), "dx: a pad is not 0");
}

#[test]
fn norm_over_padded_rows_counts_the_real_entries() {
    check_padded(24, 97, 104, 11); // TRM Sudoku: 97 positions in rows of 104 (register path)
    check_padded(5, 97, 100, 12); // rows of 100: the scalar path
    check_padded(3, 9, 16, 13); // more pad than a vector
}
