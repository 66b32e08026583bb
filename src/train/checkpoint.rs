//! Training checkpoints: `RUN/checkpoints/step_NNNNNNNN/` holding `model.safetensors` (the
//! evaluation weights under the official names, loadable by every command), `state.safetensors`
//! (the dense parameters, AdamATan2 moments, EMA, ACT carry; cursor, RNG position and step in
//! the metadata) and, written last, the `COMPLETE` marker. The puzzle embedding table is stored
//! once, in `model.safetensors` (the evaluation weights hold the live table, EMA or not): at
//! ARC's million ids it is 2 GB, and the optimizer keeps no moments or EMA of it. The directory is assembled under a
//! temporary name and renamed, so a crash at any point leaves the previous complete
//! checkpoint as the one `resume` picks.

use super::sampler::Sampler;
use super::{TrainConfig, Trainer};
use crate::act::{Batch, Carry};
use crate::backend::Backend;
use crate::hrm::Hrm;
use crate::model::checkpoint::{NamedTensor, TensorFile, save_checkpoint, write_atomic, write_tensors};
use crate::model::{HostParams, TensorKind, dense_specs, tensor_specs};
use crate::optim::Optimizer;
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const MARKER: &str = "COMPLETE";
const STATE_KEY: &str = "trainer";

#[derive(Serialize, Deserialize)]
struct TrainerMeta {
    step: u64,
    optimizer_step: u32,
    sampler: Sampler,
    /// Written by versions whose exploration was a stateful stream; ignored (exploration is
    /// now a counter-based draw from the seed and the step).
    #[serde(default, skip_serializing)]
    #[allow(dead_code)]
    explore_seed: u64,
    #[serde(default, skip_serializing)]
    #[allow(dead_code)]
    explore_word_pos: String,
    config: TrainConfig,
    /// Ranks of the data-parallel run that wrote it (1: a single process).
    #[serde(default = "one")]
    world_size: usize,
}

fn one() -> usize {
    1
}

/// The ACT carry of the whole global batch on the host (a data-parallel run gathers its
/// ranks' rows into one before rank 0 writes the checkpoint).
pub struct HostCarry {
    pub z_h: Vec<f32>,
    pub z_l: Vec<f32>,
    pub steps: Vec<u32>,
    pub halted: Vec<bool>,
    pub data: Batch,
}

impl HostCarry {
    /// A training carry as the backend holds it (steps, halting and the current puzzles live
    /// in the workspace there, not in the carry's host fields).
    pub fn of<B: Backend>(be: &B, c: &Carry<B>) -> Self {
        let rows = be.act_rows(&c.ws.act);
        HostCarry {
            z_h: be.download_act(&c.z_h),
            z_l: be.download_act(&c.z_l),
            steps: rows.steps,
            halted: rows.halted,
            data: Batch {
                inputs: be.download_i32(&c.ws.inputs.tokens),
                puzzle_ids: be.download_i32(&c.ws.inputs.puzzle_ids),
                labels: Some(be.download_i32(&c.ws.labels)),
            },
        }
    }
}

pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

fn step_dir_name(step: u64) -> String {
    format!("step_{step:08}")
}

/// Complete checkpoints of a run, oldest first.
pub fn complete_checkpoints(run: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let dir = checkpoints_dir(run);
    let mut out = Vec::new();
    if !dir.exists() {
        return Ok(out);
    }
    for e in std::fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
        if let Some(step) = name.strip_prefix("step_").and_then(|s| s.parse::<u64>().ok())
            && p.join(MARKER).exists()
        {
            out.push((step, p));
        }
    }
    out.sort();
    Ok(out)
}

/// A dense set (moments, EMA) on the host.
fn host_of<B: Backend>(be: &B, cfg: &TrainConfig, set: &crate::model::ParamSet<B::F32>) -> HostParams {
    set.map_dense(&cfg.model, |_, t| be.download_f32(t))
}

/// Write a checkpoint of `t` into `run`, then drop complete checkpoints beyond the newest
/// `keep_checkpoints`. Returns the checkpoint directory.
pub fn save<B: Backend>(be: &B, t: &Trainer<B>, run: &Path) -> Result<PathBuf> {
    save_with(be, t, run, &HostCarry::of(be, &t.carry), 1)
}

/// [`save`] with the carry of all `world_size` ranks given (rows of the global batch).
pub fn save_with<B: Backend>(
    be: &B,
    t: &Trainer<B>,
    run: &Path,
    c: &HostCarry,
    world_size: usize,
) -> Result<PathBuf> {
    let cfg = &t.cfg;
    let dir = checkpoints_dir(run);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let final_dir = dir.join(step_dir_name(t.step));
    // Unique per process: two writers never share a temporary directory.
    let tmp = dir.join(format!(".{}.tmp.{}", step_dir_name(t.step), std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp)?;

    save_checkpoint(&tmp.join("model.safetensors"), &cfg.model, &t.eval_params(be))?;

    let specs = dense_specs(&cfg.model);
    let mut tensors = Vec::new();
    let mut push_set = |prefix: &str, set: HostParams| {
        for (s, v) in specs.iter().zip(set.dense_tensors()) {
            tensors.push(NamedTensor::f32(format!("{prefix}.{}", s.name), s.shape.clone(), v.clone()));
        }
    };
    push_set("param", t.model.params.map_dense(&cfg.model, |_, p| be.download_param(p)));
    push_set("adam_m", host_of(be, cfg, &t.opt.m));
    push_set("adam_v", host_of(be, cfg, &t.opt.v));
    if let Some(e) = &t.ema {
        push_set("ema", host_of(be, cfg, e));
    }
    let (b, n) = (cfg.batch_size, cfg.model.seq_len);
    let zshape = vec![b, cfg.model.total_seq_len(), cfg.model.hidden_size];
    tensors.push(NamedTensor::f32("carry.z_H", zshape.clone(), c.z_h.clone()));
    tensors.push(NamedTensor::f32("carry.z_L", zshape, c.z_l.clone()));
    tensors.push(NamedTensor::i32("carry.steps", vec![b], c.steps.iter().map(|&s| s as i32).collect()));
    tensors.push(NamedTensor::u8("carry.halted", vec![b], c.halted.iter().map(|&h| h as u8).collect()));
    tensors.push(NamedTensor::i32("carry.inputs", vec![b, n], c.data.inputs.clone()));
    tensors.push(NamedTensor::i32("carry.puzzle_identifiers", vec![b], c.data.puzzle_ids.clone()));
    let labels = c.data.labels.clone().unwrap_or(vec![0; b * n]);
    tensors.push(NamedTensor::i32("carry.labels", vec![b, n], labels));
    let meta = TrainerMeta {
        step: t.step,
        optimizer_step: t.opt.step,
        sampler: t.sampler.clone(),
        explore_seed: 0,
        explore_word_pos: String::new(),
        config: cfg.clone(),
        world_size,
    };
    let metadata = HashMap::from([(STATE_KEY.to_string(), serde_json::to_string(&meta)?)]);
    write_tensors(&tmp.join("state.safetensors"), &tensors, Some(metadata))?;

    if final_dir.exists() {
        std::fs::remove_dir_all(&final_dir)?;
    }
    std::fs::rename(&tmp, &final_dir).with_context(|| format!("renaming {} into place", tmp.display()))?;
    write_atomic(&final_dir.join(MARKER), format!("{}\n", t.step).as_bytes())?;

    let all = complete_checkpoints(run)?;
    if all.len() > cfg.keep_checkpoints.max(1) {
        for (_, old) in &all[..all.len() - cfg.keep_checkpoints.max(1)] {
            std::fs::remove_dir_all(old)
                .with_context(|| format!("removing old checkpoint {}", old.display()))?;
        }
    }
    Ok(final_dir)
}

/// A float tensor of a training state, refused when it holds NaN or Inf: resuming from it would
/// only carry the damage forward.
fn finite(f: &TensorFile, name: &str, shape: Option<&[usize]>) -> Result<Vec<f32>> {
    let v = f.f32(name, shape)?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        bail!("{}: tensor '{name}' holds a non-finite value ({}) at flat index {i}", f.path(), v[i]);
    }
    Ok(v)
}

/// The puzzle embedding table of a checkpoint (`None` without one): from `state` where an
/// earlier version stored it there, else from the checkpoint's `model.safetensors`, checked
/// for shape and finiteness.
fn load_table(state: &TensorFile, dir: &Path, cfg: &crate::config::ModelConfig) -> Result<Option<Vec<f32>>> {
    let Some(spec) = tensor_specs(cfg).into_iter().find(|s| s.kind == TensorKind::SparseEmbedding) else {
        return Ok(None);
    };
    let name = format!("param.{}", spec.name);
    if state.contains(&name) {
        return finite(state, &name, Some(&spec.shape)).map(Some);
    }
    let model = TensorFile::open(&dir.join("model.safetensors"))
        .context("the puzzle embedding table of a training checkpoint is kept in its model.safetensors")?;
    finite(&model, &spec.name, Some(&spec.shape)).map(Some)
}

/// Restore a trainer from the newest complete checkpoint of `run` (or from a checkpoint
/// directory given directly).
pub fn resume<B: Backend>(be: &B, run_or_ckpt: &Path) -> Result<Trainer<B>> {
    resume_shard(be, run_or_ckpt, 0, 1)
}

/// [`resume`] for rank `rank` of a data-parallel run of `world` ranks: the carry holds this
/// rank's rows of the global batch. A checkpoint written with another world size is refused.
pub fn resume_shard<B: Backend>(be: &B, run_or_ckpt: &Path, rank: usize, world: usize) -> Result<Trainer<B>> {
    let dir = if run_or_ckpt.join(MARKER).exists() {
        run_or_ckpt.to_path_buf()
    } else {
        complete_checkpoints(run_or_ckpt)?
            .pop()
            .map(|(_, p)| p)
            .ok_or_else(|| anyhow!("{}: no complete checkpoint to resume from", run_or_ckpt.display()))?
    };
    let f = TensorFile::open(&dir.join("state.safetensors"))?;
    let meta: TrainerMeta = serde_json::from_str(
        f.metadata().get(STATE_KEY).ok_or_else(|| anyhow!("{}: no trainer metadata", f.path()))?,
    )
    .with_context(|| format!("{}: trainer metadata", f.path()))?;
    let cfg = meta.config;
    cfg.model.validate()?;
    if meta.world_size != world {
        bail!(
            "{}: written by a run of world size {} (data-parallel ranks) but this run has world \
             size {world}; resume with the same number of ranks (`--nproc {}`): another world size \
             would change the reduction order, so the resumed run would not continue bit for bit",
            dir.display(),
            meta.world_size,
            meta.world_size
        );
    }
    // Dense sets; checkpoints of earlier versions also hold the table's (zero) moments and an
    // EMA of it, which are not read.
    let specs = dense_specs(&cfg.model);
    let load_set = |prefix: &str| -> Result<HostParams> {
        let mut tensors = Vec::with_capacity(specs.len());
        for s in &specs {
            tensors.push(finite(&f, &format!("{prefix}.{}", s.name), Some(&s.shape))?);
        }
        let mut it = tensors.into_iter();
        Ok(HostParams::dense_from_specs(&cfg.model, |_| it.next().expect("one per spec")))
    };
    let mut params = load_set("param")?;
    params.puzzle_emb = load_table(&f, &dir, &cfg.model)?;
    let model = Hrm::new(be, &cfg.model, &params);
    drop(params);
    let upload = |h: HostParams| h.map(&cfg.model, |_, t| be.upload_f32(t));
    let opt = Optimizer {
        step: meta.optimizer_step,
        m: upload(load_set("adam_m")?),
        v: upload(load_set("adam_v")?),
    };
    let ema = match cfg.ema {
        Some(_) => Some(upload(load_set("ema")?)),
        None => None,
    };
    let (b, n) = (cfg.batch_size, cfg.model.seq_len);
    let zshape = [b, cfg.model.total_seq_len(), cfg.model.hidden_size];
    // This rank's rows [lo, hi) of the global batch (all of them for a single process).
    if !b.is_multiple_of(world) {
        bail!("{}: global batch {b} does not split over {world} ranks", dir.display());
    }
    let (lo, hi) = (rank * b / world, (rank + 1) * b / world);
    let rows = |v: Vec<i32>, width: usize| v[lo * width..hi * width].to_vec();
    let zrow = cfg.model.total_seq_len() * cfg.model.hidden_size;
    let mut carry = Carry::fresh(be, &model, hi - lo);
    carry.z_h = be.upload_act(&finite(&f, "carry.z_H", Some(&zshape))?[lo * zrow..hi * zrow]);
    carry.z_l = be.upload_act(&finite(&f, "carry.z_L", Some(&zshape))?[lo * zrow..hi * zrow]);
    // Integer tensors index embeddings and the loss: a value out of range would read past a
    // table, so every one is checked like the floats are.
    let m = &cfg.model;
    let ints = |name: &str, shape: &[usize], range: std::ops::Range<i64>, what: &str| -> Result<Vec<i32>> {
        let v = f.i32(name, Some(shape))?;
        if let Some(i) = v.iter().position(|&x| !range.contains(&(x as i64))) {
            bail!(
                "{}: tensor '{name}' holds {} at flat index {i}; expected {what} in [{}, {})",
                f.path(),
                v[i],
                range.start,
                range.end
            );
        }
        Ok(v)
    };
    let vocab = 0..m.vocab_size as i64;
    let steps = ints("carry.steps", &[b], 0..m.halt_max_steps as i64 + 1, "an ACT step count")?;
    let halted = ints("carry.halted", &[b], 0..2, "a flag")?;
    carry.steps = rows(steps, 1).into_iter().map(|s| s as u32).collect();
    carry.halted = rows(halted, 1).into_iter().map(|h| h != 0).collect();
    carry.data = Batch {
        inputs: rows(ints("carry.inputs", &[b, n], vocab.clone(), "a token id")?, n),
        puzzle_ids: rows(
            ints("carry.puzzle_identifiers", &[b], 0..m.num_puzzle_identifiers as i64, "a puzzle id")?,
            1,
        ),
        labels: Some(rows(ints("carry.labels", &[b, n], vocab, "a label id (0: ignored)")?, n)),
    };
    carry.push(be);
    if meta.step == 0 && meta.optimizer_step != 0 {
        bail!("{}: inconsistent step counters", f.path());
    }
    // The step is in the directory name, the COMPLETE marker and the state: all must agree.
    let named = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("step_"));
    if let Some(named) = named.and_then(|s| s.parse::<u64>().ok())
        && named != meta.step
    {
        bail!(
            "{}: the trainer state says step {} but its checkpoint directory {} is step {named}; \
             the state is inconsistent",
            f.path(),
            meta.step,
            dir.display()
        );
    }
    if u64::from(meta.optimizer_step) > meta.step {
        bail!(
            "{}: optimizer step {} is past the trainer step {}; the state is inconsistent",
            f.path(),
            meta.optimizer_step,
            meta.step
        );
    }
    let grads = model.zero_grads(be, hi - lo);
    Ok(Trainer {
        cfg,
        model,
        opt,
        ema,
        carry,
        sampler: meta.sampler,
        step: meta.step,
        grads,
        graphs: super::graphs_enabled(),
        warm: false,
        dist: None,
    })
}
