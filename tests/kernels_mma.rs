//! The tensor-core wrappers of `kernels/common.cuh` (`mma_bf16_16816`, `ldsm_x1/x2/x4[_trans]`)
//! through the self-test kernels of `kernels/mma_selftest.cu`, against a plain matrix product,
//! on the GPU when present, else under the CPU emulation (whose host versions implement the PTX
//! fragment layouts); skipped (with a message) without either.
//!
//! Error bound: the inputs are bf16, so every product a*b is exact in f32 and in f64; the only
//! error is the f32 summation of K products (in whatever order the tensor core or the emulation
//! adds them), at most K * 2^-24 * sum |a b| for a sequential sum; the bound allows 2K + 8 units
//! of 2^-24 * sum |a b| (slack for the tensor core's internal adder). A wrong fragment layout
//! misplaces whole products, an error of order |a b| itself, thousands of times the bound; the
//! planted-bug tests show the comparison catches exactly that.

mod kernel_common;
use cudarc::driver::{LaunchConfig, PushKernelArg};
use half::bf16;
use hrm::backend::cuda::{CudaDevice, DeviceKind};
use kernel_common::*;

/// Reference c = a b (+ c0) in f64 over bf16 inputs, and the per-element error bound.
fn reference(a: &[f32], b: &[f32], c0: Option<&[f32]>, m: usize, n: usize, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut want = vec![0.0f64; m * n];
    let mut bound = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = c0.map_or(0.0, |c| c[i * n + j] as f64);
            let mut mag = s.abs();
            for q in 0..k {
                let p = a[i * k + q] as f64 * b[q * n + j] as f64;
                s += p;
                mag += p.abs();
            }
            want[i * n + j] = s;
            bound[i * n + j] = (2 * k + 8) as f64 * 2f64.powi(-24) * mag + 1e-30;
        }
    }
    (want, bound)
}

/// Largest |got - want| / bound; NaN or infinity counts as infinitely wrong.
fn worst(got: &[f32], want: &[f64], bound: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want.iter().zip(bound))
        .map(|(&g, (&w, &b))| if g.is_finite() { (g as f64 - w).abs() / b } else { f64::INFINITY })
        .fold(0.0, f64::max)
}

fn emulated(dev: &CudaDevice) -> bool {
    dev.kind != DeviceKind::Gpu
}

fn cfg(grid: (u32, u32), block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid.0, grid.1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// One 16x8x16 product with fragments read by the documented layout; returns the worst error
/// in units of the bound.
fn single(dev: &CudaDevice, seed: u64, fault: i32) -> f64 {
    let mut r = rng(seed);
    let a = round_bf16(&randn(&mut r, 16 * 16, 1.0));
    let b = round_bf16(&randn(&mut r, 16 * 8, 1.0));
    let c = randn(&mut r, 16 * 8, 1.0);
    let (want, bound) = reference(&a, &b, Some(&c), 16, 8, 16);
    let (ad, bd, cd) = (upload(dev, &to_bf16(&a)), upload(dev, &to_bf16(&b)), upload(dev, &c));
    let mut d = poisoned_f32(dev, 16 * 8);
    let f = dev.func("mma_selftest", "mma_selftest_single").unwrap();
    let mut l = dev.stream.launch_builder(&f);
    l.arg(&ad).arg(&bd).arg(&cd).arg(&mut d).arg(&fault);
    // SAFETY: (const bf16*, const bf16*, const float*, float*, int), sizes as in the kernel.
    unsafe { l.launch(cfg((1, 1), 32)) }.unwrap();
    worst(&download(dev, &d), &want, &bound)
}

/// c[m][n] = a[m][k] b[k][n] by the tiled kernel in `mode` (see kernels/mma_selftest.cu).
fn tiled(dev: &CudaDevice, (m, n, k): (usize, usize, usize), mode: i32, fault: i32, seed: u64) -> f64 {
    let mut r = rng(seed);
    let a = round_bf16(&randn(&mut r, m * k, 1.0));
    let b = round_bf16(&randn(&mut r, k * n, 1.0));
    let (want, bound) = reference(&a, &b, None, m, n, k);
    let (ad, bd) = (upload(dev, &to_bf16(&a)), upload(dev, &to_bf16(&b)));
    let mut c = poisoned_f32(dev, m * n);
    let f = dev.func("mma_selftest", "mma_selftest_tiled").unwrap();
    let mut l = dev.stream.launch_builder(&f);
    let (mi, ni, ki) = (m as i32, n as i32, k as i32);
    l.arg(&ad).arg(&bd).arg(&mut c).arg(&mi).arg(&ni).arg(&ki).arg(&mode).arg(&fault);
    // SAFETY: (const bf16*, const bf16*, float*, int x5); m, n, k multiples of 16.
    unsafe { l.launch(cfg(((n / 16) as u32, (m / 16) as u32), 32)) }.unwrap();
    worst(&download(dev, &c), &want, &bound)
}

#[test]
fn mma_16x8x16_matches_a_plain_product() {
    let Some(dev) = device("kernels_mma") else {
        return;
    };
    for seed in 0..4 {
        let w = single(&dev, seed, 0);
        assert!(w <= 1.0, "seed {seed}: error {w:.3} x the bound");
    }
}

#[test]
fn tiled_ldmatrix_mma_matches_a_plain_product_in_every_load_mode() {
    let Some(dev) = device("kernels_mma") else {
        return;
    };
    for mode in 0..4 {
        for (i, shape) in [(16, 16, 16), (32, 48, 64), (64, 32, 96)].into_iter().enumerate() {
            let w = tiled(&dev, shape, mode, 0, 10 * mode as u64 + i as u64);
            assert!(w <= 1.0, "mode {mode} shape {shape:?}: error {w:.3} x the bound");
        }
    }
}

/// The kernel with a wrong fragment index (a[1] and a[2] swapped) must fail the same comparison,
/// on either backend.
#[test]
fn wrong_fragment_index_in_a_kernel_is_caught() {
    let Some(dev) = device("kernels_mma") else {
        return;
    };
    let w = tiled(&dev, (32, 32, 32), 4, 0, 99);
    assert!(w > 100.0, "a swapped fragment register went unnoticed (error {w:.3} x the bound)");
}

/// Planted layout bugs in the emulation itself (lanes' fragments swapped) fail the comparison.
#[test]
fn planted_emulation_layout_bugs_are_caught() {
    let Some(dev) = device("kernels_mma") else {
        return;
    };
    if !emulated(&dev) {
        eprintln!("planted emulation bugs: CPU emulation only");
        return;
    }
    let w = single(&dev, 5, 1);
    assert!(w > 100.0, "mma with lanes 0 and 5 of A swapped went unnoticed ({w:.3})");
    for mode in 0..4 {
        let w = tiled(&dev, (32, 32, 32), mode, 1, 7);
        assert!(w > 100.0, "mode {mode}: mma layout bug went unnoticed ({w:.3})");
        let w = tiled(&dev, (32, 32, 32), mode, 2, 7);
        assert!(w > 100.0, "mode {mode}: ldmatrix layout bug went unnoticed ({w:.3})");
    }
    // and the next launch is clean again (the planted bug lasts one launch)
    let w = single(&dev, 5, 0);
    assert!(w <= 1.0, "planted bug leaked into the next launch ({w:.3})");
}

/// mma.sync is warp-collective: the emulation refuses a warp in which some lanes have exited.
#[test]
fn partial_warp_mma_is_refused() {
    let Some(dev) = device("kernels_mma") else {
        return;
    };
    if !emulated(&dev) {
        eprintln!("partial-warp mma: CPU emulation only (undefined on a GPU)");
        return;
    }
    let mut d = poisoned_f32(&dev, 32);
    let f = dev.func("mma_selftest", "mma_selftest_partial_warp").unwrap();
    let mut l = dev.stream.launch_builder(&f);
    l.arg(&mut d);
    // SAFETY: (float*); the emulation stops the launch.
    let err = unsafe { l.launch(cfg((1, 1), 32)) }.expect_err("a partial-warp mma went unnoticed");
    assert!(format!("{err}").contains("all 32 lanes"), "unexpected error: {err}");
    // a block of 16 threads (a partial warp) is refused the same way
    let f = dev.func("mma_selftest", "mma_selftest_single").unwrap();
    let x = upload(&dev, &vec![bf16::ONE; 256]);
    let c = upload(&dev, &[0.0f32; 128]);
    let mut out = poisoned_f32(&dev, 128);
    let fault = 0i32;
    let mut l = dev.stream.launch_builder(&f);
    l.arg(&x).arg(&x).arg(&c).arg(&mut out).arg(&fault);
    // SAFETY: as in `single`; the emulation stops the launch.
    let err = unsafe { l.launch(cfg((1, 1), 16)) }.expect_err("a 16-thread mma went unnoticed");
    assert!(format!("{err}").contains("all 32 lanes"), "unexpected error: {err}");
}
