//! The optimizers over the whole parameter set: AdamATan2 for trainable tensors, SignSGD for
//! the puzzle embedding rows present in the batch, and the reference learning-rate schedule.

use crate::backend::{AdamHyper, Backend, OptimRule, OptimStep};
use crate::hrm::Hrm;
use crate::model::{ParamSet, TensorKind, dense_specs};
use serde::{Deserialize, Serialize};

/// Optimizer hyper-parameters (the reference's names and Sudoku defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub lr: f64,
    pub lr_min_ratio: f64,
    pub lr_warmup_steps: u64,
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub puzzle_emb_lr: f64,
    pub puzzle_emb_weight_decay: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-4,
            lr_min_ratio: 1.0,
            lr_warmup_steps: 2000,
            beta1: 0.9,
            beta2: 0.95,
            weight_decay: 1.0,
            puzzle_emb_lr: 1e-4,
            puzzle_emb_weight_decay: 1.0,
        }
    }
}

/// `cosine_schedule_with_warmup_lr_lambda` of the reference: linear warmup, then a half cosine
/// from `base` down to `base * min_ratio` at `total_steps` (constant when min_ratio = 1).
pub fn scheduled_lr(base: f64, step: u64, warmup: u64, total_steps: u64, min_ratio: f64) -> f64 {
    if step < warmup {
        return base * step as f64 / warmup.max(1) as f64;
    }
    let progress = (step - warmup) as f64 / (total_steps.saturating_sub(warmup)).max(1) as f64;
    base * (min_ratio + ((1.0 - min_ratio) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0))
}

/// Optimizer state: step count and the two AdamATan2 moments per dense tensor (the puzzle
/// embedding's SignSGD keeps none, so the moment sets hold no table).
pub struct Optimizer<B: Backend> {
    pub step: u32,
    pub m: ParamSet<B::F32>,
    pub v: ParamSet<B::F32>,
}

impl<B: Backend> Optimizer<B> {
    pub fn new(be: &B, model: &Hrm<B>) -> Self {
        let zeros = || ParamSet::dense_from_specs(&model.cfg, |s| be.zeros_f32(s.numel()));
        Optimizer { step: 0, m: zeros(), v: zeros() }
    }

    /// One step with the given learning rates: AdamATan2 (the EMA when given, the bf16
    /// shadows) over the dense tensors in one backend op, and sparse SignSGD of the puzzle
    /// table from the gradient rows of the batch rows with ids `puzzle_ids`; both skipped when
    /// the non-finite guard in `guard` recorded a bad step.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        be: &B,
        model: &mut Hrm<B>,
        grads: &ParamSet<B::F32>,
        ema: Option<(&mut ParamSet<B::F32>, f64)>,
        cfg: &OptimConfig,
        lr: f64,
        puzzle_lr: f64,
        puzzle_ids: &B::I32,
        guard: &B::ActState,
    ) {
        self.step += 1;
        let rules: Vec<OptimRule> = dense_specs(&model.cfg)
            .iter()
            .map(|spec| match spec.kind {
                TensorKind::Trainable => OptimRule::Adam,
                TensorKind::Buffer | TensorKind::SparseEmbedding => OptimRule::Frozen,
            })
            .collect();
        let h = OptimStep {
            adam: AdamHyper {
                lr: lr as f32,
                beta1: cfg.beta1 as f32,
                beta2: cfg.beta2 as f32,
                weight_decay: cfg.weight_decay as f32,
            },
            step: self.step,
            ema_decay: ema.as_ref().map(|(_, d)| *d as f32),
        };
        let row_len = model.cfg.puzzle_emb_ndim;
        if let (Some(table), Some(rows)) = (model.params.puzzle_emb.as_mut(), grads.puzzle_emb.as_ref()) {
            let wd = cfg.puzzle_emb_weight_decay as f32;
            be.puzzle_sign_sgd(table, rows, puzzle_ids, row_len, puzzle_lr as f32, wd, guard);
        }
        let mut params = model.params.dense_tensors_mut();
        let grads = grads.dense_tensors();
        let mut ms = self.m.tensors_mut();
        let mut vs = self.v.tensors_mut();
        let mut ema_tensors = ema.map(|(e, _)| e.tensors_mut());
        be.optimizer_step(
            &mut params,
            &grads,
            &mut ms,
            &mut vs,
            ema_tensors.as_deref_mut(),
            &rules,
            &h,
            guard,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_constant_like_the_reference() {
        assert_eq!(scheduled_lr(1e-4, 0, 2000, 26040, 1.0), 0.0);
        assert!((scheduled_lr(1e-4, 1, 2000, 26040, 1.0) - 5e-8).abs() < 1e-20);
        assert!((scheduled_lr(1e-4, 2000, 2000, 26040, 1.0) - 1e-4).abs() < 1e-20);
        assert!((scheduled_lr(1e-4, 20000, 2000, 26040, 1.0) - 1e-4).abs() < 1e-20);
        // With a min ratio: cosine from base at the end of warmup to base*ratio at the end.
        assert!((scheduled_lr(1.0, 26040, 2000, 26040, 0.1) - 0.1).abs() < 1e-12);
        assert!((scheduled_lr(1.0, 14020, 2000, 26040, 0.1) - 0.55).abs() < 1e-12);
    }
}
