//! Finite-difference check of the backward. With H_cycles = L_cycles = 1 a segment is exactly
//! the two gradient-carrying updates (no no-grad part), so the one-step gradient is the true
//! gradient of the loss with the Q targets held fixed (the reference detaches them).
//!
//! Method: for every tensor, a random unit direction u; the central difference
//! (L(θ + εu) - L(θ - εu)) / 2ε against <grad, u>. The loss accumulates in f64 over f32
//! activations (relative noise ~1e-7); with ε = 1e-2 and directional derivatives of 1e-3..1
//! the truncation (O(ε²)) and rounding errors stay below ~1e-3 relative, so we require 2e-2,
//! while a wrong backward (a dropped term, a transposed product) is off by O(1).

use hrm::act::{Batch, Carry, eval_step, train_step};
use hrm::backend::Backend;
use hrm::backend::cpu::Cpu;
use hrm::backend::cpu::loss::bce_with_logits;
use hrm::config::{ModelConfig, PosEncodings};
use hrm::hrm::Hrm;
use hrm::model::{HostParams, TensorKind, tensor_specs};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn config(pos: PosEncodings) -> ModelConfig {
    ModelConfig {
        hidden_size: 16,
        num_heads: 2,
        expansion: 2.0,
        H_layers: 1,
        L_layers: 2,
        H_cycles: 1,
        L_cycles: 1,
        halt_max_steps: 4,
        halt_exploration_prob: 0.0,
        puzzle_emb_ndim: 24, // two prefix positions, the second zero-padded
        vocab_size: 11,
        seq_len: 81,
        num_puzzle_identifiers: 3,
        rope_theta: 10000.0,
        rms_norm_eps: 1e-5,
        pos_encodings: pos,
        ..ModelConfig::sudoku()
    }
}

fn random_batch(rng: &mut ChaCha8Rng, b: usize) -> Batch {
    Batch {
        inputs: (0..b * 81).map(|_| rng.gen_range(1..11)).collect(),
        puzzle_ids: (0..b).map(|i| (i % 2) as i32).collect(),
        // a few PAD (ignored) labels
        labels: Some((0..b * 81).map(|i| if i % 37 == 5 { 0 } else { rng.gen_range(2..11) }).collect()),
    }
}

/// total loss / B from a fresh carry, with the BCE targets given.
fn loss(cfg: &ModelConfig, params: &HostParams, batch: &Batch, seq_correct: &[f32], target: &[f32]) -> f64 {
    let be = Cpu;
    let model = Hrm::new(&be, cfg, params);
    let b = batch.len();
    let mut carry = Carry::fresh(&be, &model, b);
    let seg = eval_step(&be, &model, &mut carry, batch).unwrap();
    let heads = seg.heads;
    let labels = batch.labels.clone().unwrap();
    let lm = be.lm_loss(carry.logits(), &labels, cfg.vocab_size, cfg.seq_len, 0.0, None);
    let lm_loss: f64 = lm.loss_per_row.iter().sum();
    let qh = bce_with_logits(&heads.q_halt, seq_correct, 0.0, None);
    let qc = bce_with_logits(&heads.q_continue, target, 0.0, None);
    (lm_loss + 0.5 * (qh + qc)) / b as f64
}

fn check(pos: PosEncodings) {
    let cfg = config(pos);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut params = HostParams::init(&cfg, &mut hrm::rng::seeded(3));
    // Make the zero-initialized tensors non-trivial so their gradients are exercised.
    for v in params.q_head_weight.iter_mut().chain(params.puzzle_emb.as_mut().unwrap().iter_mut()) {
        *v = rng.gen_range(-0.5..0.5);
    }
    params.q_head_bias = vec![0.2, -0.3];
    let batch = random_batch(&mut rng, 3);
    let b = batch.len();

    let be = Cpu;
    let model = Hrm::new(&be, &cfg, &params);
    let mut carry = Carry::fresh(&be, &model, b);
    let mut grads = model.zero_grads(&be, b);
    let st = train_step(&be, &model, &mut carry, &batch, &vec![0; b], b, &mut grads);
    // seq_correct at the base point: recompute from the logits of a plain forward.
    let seq_correct = vec![0.0f32; b]; // random labels: no row is right
    let target = st.target_q_continue.clone();
    let base = loss(&cfg, &params, &batch, &seq_correct, &target);
    assert!((base - st.total_loss() / b as f64).abs() < 1e-6 * base, "loss {base} vs {}", st.total_loss());

    let eps = 1e-2f64;
    let mut checked = 0;
    for (k, spec) in tensor_specs(&cfg).iter().enumerate() {
        if spec.kind == TensorKind::Buffer {
            continue;
        }
        let n = spec.numel();
        let mut u: Vec<f64> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        let norm = u.iter().map(|x| x * x).sum::<f64>().sqrt();
        u.iter_mut().for_each(|x| *x /= norm);
        // (the puzzle embedding's gradient is one row per batch row: the table's is their
        // per-id sum)
        let g = &match spec.kind {
            TensorKind::SparseEmbedding => hrm::model::scatter_puzzle_rows(
                grads.tensors()[k],
                &batch.puzzle_ids,
                spec.shape[0],
                spec.shape[1],
            ),
            _ => grads.tensors()[k].clone(),
        };
        let analytic: f64 = g.iter().zip(&u).map(|(a, b)| *a as f64 * b).sum();
        let shifted = |sign: f64| {
            let mut p = params.clone();
            for (v, d) in p.tensors_mut()[k].iter_mut().zip(&u) {
                *v = (*v as f64 + sign * eps * d) as f32;
            }
            loss(&cfg, &p, &batch, &seq_correct, &target)
        };
        let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps);
        let err = (numeric - analytic).abs() / analytic.abs().max(numeric.abs()).max(1e-4);
        assert!(
            err < 2e-2,
            "{}: numeric {numeric:.6e} vs analytic {analytic:.6e} (rel err {err:.2e})",
            spec.name
        );
        assert!(g.iter().all(|v| v.is_finite()));
        checked += 1;
    }
    assert!(checked >= 10);
}

#[test]
fn backward_matches_finite_differences_with_rope() {
    check(PosEncodings::Rope);
}

#[test]
fn backward_matches_finite_differences_with_learned_positions() {
    check(PosEncodings::Learned);
}
