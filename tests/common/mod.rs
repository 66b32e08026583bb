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
