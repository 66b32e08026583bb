//! ACT training, written once against the `Backend`: data order, exploration, the training
//! step, the optimizers with the reference schedule, EMA, the NaN guard, and checkpoints that
//! resume bit-identically.

pub mod checkpoint;
pub mod data;
pub mod distributed;
pub mod interrupt;
pub mod metrics;
pub mod run;
pub mod rundir;
pub mod sampler;

use crate::act::{Carry, Exploration, step_buffer_ids, train_step_inputs, train_step_ops};
use crate::backend::cpu::halting::explore_key;
use crate::backend::{ActReport, Backend};
use crate::config::ModelConfig;
use crate::hrm::Hrm;
use crate::model::{HostParams, ParamSet};
use crate::optim::{OptimConfig, Optimizer, scheduled_lr};
use anyhow::{Result, bail};
use sampler::{PuzzleSource, Sampler};
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
    /// It covers the dense parameters; the puzzle embedding table is used as trained (the
    /// reference's EMA covers parameters only, and the table is a buffer there).
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

/// Training state: model, optimizer, EMA, ACT carry, data cursor, step. (Exploration is a
/// counter-based draw from the seed and the step, so it has no state to save.)
pub struct Trainer<B: Backend> {
    pub cfg: TrainConfig,
    pub model: Hrm<B>,
    pub opt: Optimizer<B>,
    pub ema: Option<ParamSet<B::F32>>,
    pub carry: Carry<B>,
    pub sampler: Sampler,
    pub step: u64,
    /// the step's gradients (zeroed at the start of each step); the puzzle embedding's are
    /// one row per carry row
    pub grads: ParamSet<B::F32>,
    /// Record the step as a graph and replay it where the backend can (CUDA); off with
    /// `HRM_CUDA_GRAPHS=0`.
    pub graphs: bool,
    /// A step ran in this process (so every buffer of the step exists).
    warm: bool,
    /// This process's rank of a data-parallel run (`None`: a single process).
    pub dist: Option<std::sync::Arc<distributed::Dist>>,
}

/// Whether training steps use recorded graphs (`HRM_CUDA_GRAPHS=0` turns them off).
pub fn graphs_enabled() -> bool {
    std::env::var("HRM_CUDA_GRAPHS").map_or(true, |v| v != "0")
}

impl<B: Backend> Trainer<B> {
    pub fn new(be: &B, cfg: TrainConfig, params: &HostParams) -> Self {
        let model = Hrm::new(be, &cfg.model, params);
        let opt = Optimizer::new(be, &model);
        let ema = cfg.ema.map(|_| params.map_dense(&cfg.model, |_, t| be.upload_f32(t)));
        let carry = Carry::fresh(be, &model, cfg.batch_size);
        let grads = model.zero_grads(be, cfg.batch_size);
        Trainer {
            sampler: Sampler::new(cfg.seed),
            cfg,
            model,
            opt,
            ema,
            carry,
            step: 0,
            grads,
            graphs: graphs_enabled(),
            warm: false,
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

    /// One training step, enqueued on the backend without reading anything back. A
    /// non-finite loss or gradient is recorded by the backend's guard, which skips that step's
    /// update and every later one; [`Trainer::report`] turns it into an error naming the step.
    pub fn train_step(&mut self, be: &B, data: &dyn PuzzleSource) -> Result<()> {
        let cfg = &self.cfg;
        let b = cfg.batch_size;
        let step = self.step + 1;
        let step_u32 =
            u32::try_from(step).map_err(|_| anyhow::anyhow!("step {step} exceeds the supported count"))?;
        let batch = self.sampler.next_batch(data, b, cfg.model.seq_len);
        // Data parallel: this rank's rows of the global batch (the step still divides by b).
        let dist = self.dist.clone();
        let (batch, first_row) = distributed::shard(dist.as_deref(), batch);
        let explore = Exploration::Seeded {
            key: explore_key(cfg.seed, step),
            prob: cfg.model.halt_exploration_prob,
            first_row,
        };
        train_step_inputs(be, &self.model, &mut self.carry, &batch, explore, step_u32);
        // The rest is the same every step: after the first step made every buffer, a device
        // backend records it once per arrangement of the ping-pong buffers and replays it (not
        // in a data-parallel run, whose collectives run between the backward and the guard).
        let record = self.graphs && self.warm && dist.is_none();
        let key = if record { step_buffer_ids(be, &self.carry) } else { Vec::new() };
        let (model, carry, grads) = (&self.model, &mut self.carry, &mut self.grads);
        let mut ops = || {
            for g in grads.tensors_mut() {
                be.zero_f32(g);
            }
            train_step_ops(be, model, carry, b, grads);
            if dist.is_none() {
                be.act_guard(&mut carry.ws.act, &grads.tensors());
            }
        };
        if record {
            be.replay_or_record(&key, &mut ops);
            // A replay does not move the host's buffer handles; a step that traded buffers
            // for good could not be replayed, so it runs directly from then on.
            if step_buffer_ids(be, &self.carry) != key {
                self.graphs = false;
            }
        } else {
            ops();
        }
        self.warm = true;
        // Data parallel: dense gradients summed over the ranks, the puzzle gradient rows and
        // ids of every rank gathered (in global row order), then guarded, so every rank skips
        // alike, and every rank applies the same sparse update.
        let gathered = if dist.is_some() {
            let d = dist.as_deref();
            distributed::reduce_grads(d, be, &mut self.grads)
                .map_err(|e| e.context(format!("step {step}")))?;
            let ids = &self.carry.ws.inputs.puzzle_ids;
            let mut all = distributed::gather_puzzle_rows(d, be, self.grads.puzzle_emb.as_ref(), ids)
                .map_err(|e| e.context(format!("step {step}")))?;
            if let Some((rows, _)) = all.as_mut() {
                // (the local rows return to their slot after the update)
                std::mem::swap(rows, self.grads.puzzle_emb.as_mut().expect("gathered rows of a table"));
            }
            be.act_guard(&mut self.carry.ws.act, &self.grads.tensors());
            all
        } else {
            None
        };
        let (lr, plr) = self.lrs(step);
        let ema = self.ema.as_mut().zip(cfg.ema);
        let ws = &self.carry.ws;
        let ids = gathered.as_ref().map_or(&ws.inputs.puzzle_ids, |(_, ids)| ids);
        self.opt.apply(be, &mut self.model, &self.grads, ema, &cfg.optim, lr, plr, ids, &ws.act);
        if let Some((mut local, _)) = gathered {
            std::mem::swap(&mut local, self.grads.puzzle_emb.as_mut().expect("gathered rows of a table"));
        }
        // No wait for the device here: steps queue back to back (errors the device meets show
        // at the next report).
        be.check_enqueued().map_err(|e| e.context(format!("step {step}: {} backend", be.name())))?;
        self.step = step;
        Ok(())
    }

    /// The sums of the losses and metrics since the last report (reading them synchronises
    /// with the backend), or the error of a non-finite loss or gradient: that step's update and
    /// all later ones were skipped, so the parameters are those after the step before it.
    pub fn report(&mut self, be: &B) -> Result<ActReport> {
        let r = be.act_report(&mut self.carry.ws.act);
        be.check().map_err(|e| e.context(format!("step {}: {} backend", self.step, be.name())))?;
        // Data parallel: the sums over every rank (each rank reports the same).
        let r = distributed::reduce_report(self.dist.as_deref(), be, r)?;
        if let Some(bad) = r.bad_step {
            let what = match r.bad_tensor {
                Some(t) => {
                    let specs = crate::model::tensor_specs(&self.cfg.model);
                    format!("non-finite gradient in {}", specs.get(t).map_or("?", |s| s.name.as_str()))
                }
                None => "non-finite loss".to_string(),
            };
            let loss = if r.bad_loss && r.bad_tensor.is_some() { " (and loss)" } else { "" };
            bail!(
                "step {bad}: {what}{loss}; its update and every later one were skipped, so the \
                 parameters are those after step {}",
                bad.saturating_sub(1)
            );
        }
        Ok(r)
    }

    /// The weights to evaluate and export: the EMA when enabled, else the live parameters.
    /// (The EMA covers the dense tensors; the puzzle table is the live one.)
    pub fn eval_params(&self, be: &B) -> HostParams {
        match &self.ema {
            Some(e) => {
                let mut host = e.map(&self.cfg.model, |_, t| be.download_f32(t));
                host.puzzle_emb = self.model.params.puzzle_emb.as_ref().map(|t| be.download_param(t));
                host
            }
            None => self.model.to_host(be),
        }
    }
}
