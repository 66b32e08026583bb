//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod cli;

use hrm::model::checkpoint::{NamedTensor, TensorData, TensorFile};
use std::path::PathBuf;

pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// Relative error ||a - b|| / max(||b||, tiny) in f64, failing on any NaN.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    assert!(a.iter().all(|x| x.is_finite()), "non-finite value in the result");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

pub fn f32_of(t: &NamedTensor) -> Vec<f32> {
    match &t.data {
        TensorData::F32(v) => v.clone(),
        TensorData::I32(v) => v.iter().map(|&x| x as f32).collect(),
        TensorData::U8(v) => v.iter().map(|&x| x as f32).collect(),
    }
}

/// Compare every tensor we produced against the same-named reference tensor.
pub fn compare_all(ours: &[NamedTensor], reference: &TensorFile, bound: f64) -> Vec<(String, f64)> {
    let mut report = Vec::new();
    for t in ours {
        if !matches!(t.data, TensorData::F32(_)) {
            let want = reference.i32(&t.name, Some(&t.shape)).unwrap_or_else(|e| panic!("{e:#}"));
            let got: Vec<i32> = f32_of(t).iter().map(|&x| x as i32).collect();
            assert_eq!(got, want, "integer tensor {} differs", t.name);
            continue;
        }
        let want = reference.f32(&t.name, Some(&t.shape)).unwrap_or_else(|e| panic!("{e:#}"));
        let e = rel_err(&f32_of(t), &want);
        report.push((t.name.clone(), e));
    }
    let worst = report.iter().cloned().fold(("".to_string(), 0.0), |a, b| if b.1 > a.1 { b } else { a });
    eprintln!("worst relative error {:.3e} in {}", worst.1, worst.0);
    for (n, e) in &report {
        assert!(*e <= bound, "tensor {n}: relative error {e:.3e} > {bound:.1e}\nall: {report:#?}");
    }
    report
}

/// Root mean square of `x` in f64.
pub fn rms(x: &[f32]) -> f64 {
    (x.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// The largest absolute difference; a non-finite `got` is infinitely far.
pub fn max_err(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| if g.is_finite() { (*g as f64 - *w as f64).abs() } else { f64::INFINITY })
        .fold(0.0, f64::max)
}

/// The bf16 rule of the CUDA path (flash-attention's) for one quantity: its error against the
/// f32 CPU `reference` is at most twice that of the same math done on the CPU with bf16
/// rounding at the same points (`sim`, `CpuBf16`), plus `floor_frac` of the reference's RMS.
/// Returns err(cuda) / bound.
pub fn assert_rule(what: &str, cuda: &[f32], sim: &[f32], reference: &[f32], floor_frac: f64) -> f64 {
    assert!(reference.iter().all(|v| v.is_finite()), "{what}: reference not finite");
    let (e_cuda, e_sim) = (max_err(cuda, reference), max_err(sim, reference));
    let floor = floor_frac * rms(reference);
    let bound = 2.0 * e_sim + floor;
    eprintln!(
        "{what}: err cuda {e_cuda:.3e}, err cpu-bf16 {e_sim:.3e} ({:.3} of the RMS), floor {floor:.3e}",
        e_sim / rms(reference)
    );
    assert!(e_cuda <= bound, "{what}: CUDA error {e_cuda:e} > 2 x {e_sim:e} (bf16 CPU) + {floor:e}");
    e_cuda / bound
}

/// [`assert_rule`] over every float tensor of `cuda` against the same-named tensors of `sim`
/// and `reference`; integer tensors (decisions) are skipped, all-zero references must be
/// matched exactly. Returns how many were compared.
pub fn assert_bf16_rule(
    what: &str,
    cuda: &[NamedTensor],
    sim: &[NamedTensor],
    reference: &[NamedTensor],
    floor_frac: f64,
) -> usize {
    let mut compared = 0;
    for ((c, s), r) in cuda.iter().zip(sim).zip(reference) {
        assert_eq!((&c.name, &s.name), (&r.name, &r.name), "{what}: tensors in the same order");
        if !matches!(r.data, TensorData::F32(_)) {
            continue;
        }
        let (cv, sv, rv) = (f32_of(c), f32_of(s), f32_of(r));
        if rms(&rv) == 0.0 {
            assert_eq!(cv, rv, "{what} {}: expected exact zeros", r.name);
            continue;
        }
        assert_rule(&format!("{what} {}", r.name), &cv, &sv, &rv, floor_frac);
        compared += 1;
    }
    compared
}

/// A small TRM with the token-mixing MLP (hidden 32, 1 layer, 2 recursions of 2 z-updates,
/// 3 segments, a 2-token prefix) for runs on the emulated device.
pub fn small_trm() -> hrm::config::ModelConfig {
    hrm::config::ModelConfig {
        hidden_size: 32,
        num_heads: 2,
        L_layers: 1,
        H_cycles: 2,
        L_cycles: 2,
        puzzle_emb_ndim: 32,
        puzzle_emb_len: Some(2),
        halt_max_steps: 3,
        ..hrm::config::ModelConfig::trm_sudoku_mlp()
    }
}
