//! The CPU backend against outputs written by the PyTorch reference (tools/reference), which
//! re-implements the official HRM code in f32.
//!
//! Bounds: relative error (Frobenius norm of the difference over the norm of the reference)
//! per tensor. Both sides compute in f32 with different summation orders (gemm's blocked
//! kernels vs PyTorch's), which leaves differences of a few ulp per op. Measured on this
//! machine: <= 8e-7 after one segment (24 block applications), <= 2.3e-6 for gradients, and
//! 2.8e-5 after 16 segments (384 block applications: the recurrence amplifies rounding
//! differences by ~2x per segment). Bounds: 1e-5 for one segment and for gradients, 1e-4 for
//! 16 segments. Any semantic error (a constant, an order, a normalization, a missing RoPE)
//! showed as 1e-3 or more while this was written.

mod common;
use common::*;
use hrm::backend::cpu::Cpu;
use hrm::commands::{forward_outputs, grad_outputs, load_batch};
use hrm::model::checkpoint::{TensorFile, load_checkpoint};

const BOUND: f64 = 1e-5;
const BOUND_16_SEGMENTS: f64 = 1e-4;

fn check_forward(fixture: &str, segments: usize) {
    let dir = fixture_dir(fixture);
    let (cfg, params) = load_checkpoint(&dir.join("weights.safetensors"), None).unwrap();
    let cfg_json = hrm::config::ModelConfig::from_json_file(&dir.join("config.json")).unwrap();
    assert_eq!(cfg, cfg_json, "config.json and the checkpoint metadata agree");
    let batch = load_batch(&dir.join("batch.safetensors"), &cfg).unwrap();
    let ours = forward_outputs(&Cpu, &cfg, &params, &batch, segments).unwrap();
    let reference = TensorFile::open(&dir.join(format!("forward_{segments}.safetensors"))).unwrap();
    compare_all(&ours, &reference, if segments > 8 { BOUND_16_SEGMENTS } else { BOUND });
}

#[test]
fn tiny_forward_1_segment_matches_pytorch() {
    check_forward("tiny", 1);
}

#[test]
fn tiny_forward_16_segments_matches_pytorch() {
    check_forward("tiny", 16);
}

#[test]
fn padded_prefix_learned_positions_forward_matches_pytorch() {
    check_forward("tiny_pad", 1);
    check_forward("tiny_pad", 6);
}

fn check_grad(fixture: &str) {
    let dir = fixture_dir(fixture);
    let (cfg, params) = load_checkpoint(&dir.join("weights.safetensors"), None).unwrap();
    let batch = load_batch(&dir.join("batch.safetensors"), &cfg).unwrap();
    let ours = grad_outputs(&Cpu, &cfg, &params, &batch).unwrap();
    let reference = TensorFile::open(&dir.join("grad.safetensors")).unwrap();
    compare_all(&ours, &reference, BOUND);
}

#[test]
fn tiny_grad_matches_pytorch() {
    check_grad("tiny");
}

#[test]
fn padded_prefix_learned_positions_grad_matches_pytorch() {
    check_grad("tiny_pad");
}
