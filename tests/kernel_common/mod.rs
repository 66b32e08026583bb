//! Helpers shared by the kernel tests: random inputs, bf16 rounding, NaN-poisoned outputs and
//! element-wise comparisons in which NaN never passes.
#![allow(dead_code)]

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DeviceRepr};
use half::bf16;
use hrm::backend::cuda::CudaDevice;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Unit roundoff of bf16 (8 significant bits, 7 stored): rounding one value to bf16 changes it
/// by at most 2^-8 of its magnitude.
pub const BF16_EPS: f32 = 1.0 / 256.0;

pub fn device(test: &str) -> Option<Arc<CudaDevice>> {
    CudaDevice::for_tests(test)
}

pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Normal-ish values (sum of uniforms), scaled.
pub fn randn(r: &mut ChaCha8Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let s: f32 = (0..4).map(|_| r.r#gen::<f32>()).sum::<f32>() - 2.0;
            s * 1.732 * scale
        })
        .collect()
}

pub fn to_bf16(x: &[f32]) -> Vec<bf16> {
    x.iter().map(|&v| bf16::from_f32(v)).collect()
}
pub fn from_bf16(x: &[bf16]) -> Vec<f32> {
    x.iter().map(|v| v.to_f32()).collect()
}
/// Rounds to bf16 and back: the values the kernel actually sees.
pub fn round_bf16(x: &[f32]) -> Vec<f32> {
    from_bf16(&to_bf16(x))
}

pub fn upload<T: DeviceRepr + Clone>(dev: &CudaDevice, x: &[T]) -> CudaSlice<T> {
    dev.stream.clone_htod(x).expect("upload")
}
pub fn download<T: DeviceRepr + Clone + Default>(dev: &CudaDevice, x: &CudaSlice<T>) -> Vec<T> {
    dev.stream.clone_dtoh(x).expect("download")
}
/// A bf16 output buffer filled with NaN, so anything the kernel fails to write shows.
pub fn poisoned_bf16(dev: &CudaDevice, n: usize) -> CudaSlice<bf16> {
    upload(dev, &vec![bf16::NAN; n])
}
pub fn poisoned_f32(dev: &CudaDevice, n: usize) -> CudaSlice<f32> {
    upload(dev, &vec![f32::NAN; n])
}

fn rms(x: &[f32]) -> f32 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len() as f64).sqrt() as f32
}

/// Asserts `|got - want| <= rel * (|want| + floor * rms(want))` element-wise; NaN or infinity
/// in either side fails. `floor` lets elements near zero (after cancellation) be judged against
/// the typical magnitude instead of their own. Returns the largest error in units of the bound.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32, floor: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = rms(want);
    let mut worst = 0.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(w.is_finite(), "{what}[{i}]: reference is {w}");
        assert!(g.is_finite(), "{what}[{i}]: got {g}, want {w}");
        let bound = rel * (w.abs() + floor * scale);
        let err = (g - w).abs();
        assert!(err <= bound, "{what}[{i}]: got {g}, want {w}, |err| {err:e} > bound {bound:e}");
        if bound > 0.0 {
            worst = worst.max(err / bound);
        }
    }
    worst
}
