//! ACT training, written once against the `Backend`: data order, exploration, the training
//! step, the optimizers with the reference schedule, EMA, the NaN guard, and checkpoints that
//! resume bit-identically.

pub mod checkpoint;
pub mod data;
pub mod distributed;
pub mod metrics;
pub mod run;
pub mod rundir;
pub mod sampler;

use crate::act::{Carry, StepStats, draw_min_halt_steps, train_step};
use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::hrm::Hrm;
use crate::model::{HostParams, ParamSet};
use crate::optim::{OptimConfig, Optimizer, scheduled_lr};
use anyhow::{Result, bail};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sampler::{PuzzleSource, Sampler, mix};
use serde::{Deserialize, Serialize};

/// Everything that defines a training run (saved as `config.json` beside the checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub optim: OptimConfig,
    /// Global batch size (rows of the ACT carry).
    pub batch_size: usize,
    /// Total optimizer steps (the lr schedule's horizon).
    pub steps: u64,
    pub seed: u64,
    /// EMA decay of the weights used for evaluation and `model.safetensors` (TRM uses 0.999).
    pub ema: Option<f64>,
    pub log_every: u64,
    pub checkpoint_every: u64,
    pub keep_checkpoints: usize,
    pub eval_every: u64,
    /// At most this many puzzles per evaluation set during training (0 = all).
    pub eval_limit: usize,
    pub eval_batch_size: usize,
}

impl TrainConfig {
    pub fn new(model: ModelConfig) -> Self {
        TrainConfig {
            model,
            optim: OptimConfig::default(),
            batch_size: 768,
            steps: 26_040,
            seed: 0,
            ema: None,
            log_every: 10,
            checkpoint_every: 1000,
            keep_checkpoints: 3,
            eval_every: 2000,
            eval_limit: 2000,
            eval_batch_size: 256,
        }
    }
}

/// Training state: model, optimizer, EMA, ACT carry, data cursor, exploration RNG, step.
pub struct Trainer<B: Backend> {
    pub cfg: TrainConfig,
    pub model: Hrm<B>,
    pub opt: Optimizer<B>,
    pub ema: Option<ParamSet<B::F32>>,
    pub carry: Carry<B>,
    pub sampler: Sampler,
    pub explore_rng: ChaCha8Rng,
    pub step: u64,
    /// This process's rank of a data-parallel run (`None`: a single process).
    pub dist: Option<std::sync::Arc<distributed::Dist>>,
}

/// Seed of the exploration stream (kept apart from the data stream).
fn explore_seed(seed: u64) -> u64 {
    mix(seed ^ 0x6578_706c_6f72_6521)
}

impl<B: Backend> Trainer<B> {
    pub fn new(be: &B, cfg: TrainConfig, params: &HostParams) -> Self {
        let model = Hrm::new(be, &cfg.model, params);
        let opt = Optimizer::new(be, &model);
        let ema = cfg.ema.map(|_| params.map(&cfg.model, |_, t| be.upload_f32(t)));
        let carry = Carry::fresh(be, &model, cfg.batch_size);
        Trainer {
            sampler: Sampler::new(cfg.seed),
            explore_rng: ChaCha8Rng::seed_from_u64(explore_seed(cfg.seed)),
            cfg,
            model,
            opt,
            ema,
            carry,
            step: 0,
            dist: None,
        }
    }

    /// Learning rates of step `step` (1-based, as the reference increments before computing).
    pub fn lrs(&self, step: u64) -> (f64, f64) {
        let o = &self.cfg.optim;
        (
            scheduled_lr(o.lr, step, o.lr_warmup_steps, self.cfg.steps, o.lr_min_ratio),
            scheduled_lr(o.puzzle_emb_lr, step, o.lr_warmup_steps, self.cfg.steps, o.lr_min_ratio),
        )
    }

    /// One training step. A non-finite loss or gradient stops with an error naming the step,
    /// before any parameter changes.
    pub fn train_step(&mut self, be: &B, data: &dyn PuzzleSource) -> Result<StepStats> {
        let cfg = &self.cfg;
        let b = cfg.batch_size;
        let batch = self.sampler.next_batch(data, b, cfg.model.seq_len);
        let min_halt = draw_min_halt_steps(
            &mut self.explore_rng,
            b,
            cfg.model.halt_exploration_prob,
            cfg.model.halt_max_steps,
        );
        // Data parallel: this rank's rows of the global batch (the step still divides by b).
        let (batch, min_halt) = distributed::shard(self.dist.as_deref(), batch, min_halt);
        let mut grads = self.model.zero_grads(be);
        let mut st = train_step(be, &self.model, &mut self.carry, &batch, &min_halt, b, &mut grads);
        let step = self.step + 1;
        be.check().map_err(|e| e.context(format!("step {step}: {} backend", be.name())))?;
        // Data parallel: gradients summed over the ranks, loss terms and the puzzle ids of the
        // sparse embedding update combined (a no-op for a single process).
        let ids = distributed::reduce_step(
            self.dist.as_deref(),
            be,
            &mut grads,
            &mut st,
            &self.carry.data.puzzle_ids,
        )
        .map_err(|e| e.context(format!("step {step}")))?;
        if !st.total_loss().is_finite() {
            bail!(
                "step {step}: non-finite loss (lm {}, q_halt {}, q_continue {}); stopping before the update",
                st.lm_loss,
                st.q_halt_loss,
                st.q_continue_loss
            );
        }
        let specs = crate::model::tensor_specs(&cfg.model);
        if let Some(i) = be.first_non_finite(&grads.tensors()) {
            bail!("step {step}: non-finite gradient in {}; stopping before the update", specs[i].name);
        }
        let (lr, plr) = self.lrs(step);
        self.opt.apply(be, &mut self.model, &grads, &cfg.optim, lr, plr, &ids);
        if let (Some(ema), Some(decay)) = (self.ema.as_mut(), cfg.ema) {
            for (e, p) in ema.tensors_mut().into_iter().zip(self.model.params.tensors()) {
                be.ema_update(e, p, decay as f32);
            }
        }
        be.check().map_err(|e| e.context(format!("step {step}: optimizer on the {} backend", be.name())))?;
        self.step = step;
        Ok(st)
    }

    /// The weights to evaluate and export: the EMA when enabled, else the live parameters.
    pub fn eval_params(&self, be: &B) -> HostParams {
        match &self.ema {
            Some(e) => e.map(&self.cfg.model, |_, t| be.download_f32(t)),
            None => self.model.to_host(be),
        }
    }
}
