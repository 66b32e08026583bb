//! The validation commands `hrm forward` and `hrm grad` as library functions (the CLI only
//! parses arguments), so tests run exactly the code paths users run.

use crate::act::{Batch, Carry, eval_step, train_step};
use crate::backend::Backend;
use crate::backend::DeviceChoice;
use crate::config::ModelConfig;
use crate::hrm::Hrm;
use crate::model::checkpoint::{NamedTensor, TensorFile, load_checkpoint, write_tensors};
use crate::model::memory::{Purpose, check_host, check_items};
use crate::model::{HostParams, TensorKind, scatter_puzzle_rows, tensor_specs};
use anyhow::{Context, Result, bail};
use std::path::Path;

/// Read a batch file: `inputs` int32 [B, seq_len], `puzzle_identifiers` int32 [B], optional
/// `labels` int32 [B, seq_len]; ids are range-checked against the config.
pub fn load_batch(path: &Path, cfg: &ModelConfig) -> Result<Batch> {
    let f = TensorFile::open(path)?;
    let shape = f.shape("inputs")?;
    if shape.len() != 2 || shape[1] != cfg.seq_len || shape[0] == 0 {
        bail!("{}: tensor 'inputs' has shape {shape:?}; expected [B, {}] with B > 0", f.path(), cfg.seq_len);
    }
    let b = shape[0];
    let inputs = f.i32("inputs", Some(&[b, cfg.seq_len]))?;
    let puzzle_ids = f.i32("puzzle_identifiers", Some(&[b]))?;
    let labels = if f.contains("labels") { Some(f.i32("labels", Some(&[b, cfg.seq_len]))?) } else { None };
    let check = |name: &str, v: &[i32], hi: usize| -> Result<()> {
        if let Some((i, x)) = v.iter().enumerate().find(|(_, x)| **x < 0 || **x as usize >= hi) {
            bail!("{}: tensor '{name}' value {x} at flat index {i} is outside [0, {hi})", f.path());
        }
        Ok(())
    };
    check("inputs", &inputs, cfg.vocab_size)?;
    check("puzzle_identifiers", &puzzle_ids, cfg.num_puzzle_identifiers)?;
    if let Some(l) = &labels {
        check("labels", l, cfg.vocab_size)?;
    }
    Ok(Batch { inputs, puzzle_ids, labels })
}

/// The whole batch file is one batch, and its outputs (logits and the carry per puzzle) are
/// written at once: refused before the work when the machine cannot hold them.
fn check_batch_memory(path: &Path, cfg: &ModelConfig, purpose: Purpose, device: DeviceChoice) -> Result<()> {
    let (Purpose::Eval { batch: b } | Purpose::Train { batch: b, .. }) = purpose;
    let what = || format!("{}: a batch of {b} puzzles", path.display());
    check_host(cfg, purpose, device).with_context(what)?;
    let outputs = (cfg.seq_len * cfg.vocab_size + 2 * cfg.total_seq_len() * cfg.hidden_size + 2) as f64;
    check_items(&what(), b as f64, 4.0 * outputs)
}

fn load_model(checkpoint: &Path, config: Option<&Path>) -> Result<(ModelConfig, HostParams)> {
    let cfg = config.map(ModelConfig::from_json_file).transpose()?;
    load_checkpoint(checkpoint, cfg.as_ref())
}

/// Eval-mode ACT from a fresh carry for `segments` segments: the last segment's heads, the
/// final carry and, with labels, the exact-correct flags of every segment.
pub fn forward_outputs<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    params: &HostParams,
    batch: &Batch,
    segments: usize,
) -> Result<Vec<NamedTensor>> {
    forward_outputs_of(be, &Hrm::new(be, cfg, params), batch, segments)
}

/// [`forward_outputs`] of a model already on the backend.
pub fn forward_outputs_of<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    batch: &Batch,
    segments: usize,
) -> Result<Vec<NamedTensor>> {
    let cfg = &model.cfg;
    let b = batch.len();
    let mut carry = Carry::fresh(be, model, b);
    let mut exact = Vec::new();
    let mut last = None;
    for _ in 0..segments {
        let seg = eval_step(be, model, &mut carry, batch)?;
        if let Some(s) = &seg.scored {
            exact.extend(s.exact.iter().map(|&x| x as u8));
        }
        last = Some(seg.heads);
    }
    let heads = last.expect("segments >= 1");
    let logits = be.download_act(carry.logits());
    let (s, d) = (cfg.total_seq_len(), cfg.hidden_size);
    let mut out = vec![
        NamedTensor::f32("logits", vec![b, cfg.seq_len, cfg.vocab_size], logits),
        NamedTensor::f32("q_halt_logits", vec![b], heads.q_halt),
        NamedTensor::f32("q_continue_logits", vec![b], heads.q_continue),
        NamedTensor::f32("z_H", vec![b, s, d], be.download_act(&carry.z_h)),
        NamedTensor::f32("z_L", vec![b, s, d], be.download_act(&carry.z_l)),
    ];
    if batch.labels.is_some() {
        out.push(NamedTensor::u8("exact_correct_per_segment", vec![segments, b], exact));
    }
    be.check()?;
    Ok(out)
}

/// One training step from a fresh carry with exploration disabled: the three loss terms
/// (summed over rows) and the gradient of (total loss / batch size) under each parameter's
/// checkpoint name (the puzzle embedding's as a dense table).
pub fn grad_outputs<B: Backend>(
    be: &B,
    cfg: &ModelConfig,
    params: &HostParams,
    batch: &Batch,
) -> Result<Vec<NamedTensor>> {
    grad_outputs_of(be, &Hrm::new(be, cfg, params), batch)
}

/// [`grad_outputs`] of a model already on the backend (e.g. with its `saved` mode set).
pub fn grad_outputs_of<B: Backend>(be: &B, model: &Hrm<B>, batch: &Batch) -> Result<Vec<NamedTensor>> {
    let cfg = &model.cfg;
    let b = batch.len();
    let mut carry = Carry::fresh(be, model, b);
    let mut grads = model.zero_grads(be, b);
    let st = train_step(be, model, &mut carry, batch, &vec![0; b], b, &mut grads);
    let mut out = vec![
        NamedTensor::f32("lm_loss", vec![], vec![st.lm_loss as f32]),
        NamedTensor::f32("q_halt_loss", vec![], vec![st.q_halt_loss as f32]),
        NamedTensor::f32("q_halt_logits", vec![b], st.q_halt.clone()),
        NamedTensor::f32("q_continue_logits", vec![b], st.q_continue.clone()),
        NamedTensor::u8("halted", vec![b], st.halted.iter().map(|&h| h as u8).collect()),
    ];
    if !cfg.no_act_continue() {
        // (TRM's default trains no q_continue: no target, no loss)
        out.insert(2, NamedTensor::f32("q_continue_loss", vec![], vec![st.q_continue_loss as f32]));
        out.insert(5, NamedTensor::f32("target_q_continue", vec![b], st.target_q_continue.clone()));
    }
    for (spec, g) in tensor_specs(cfg).into_iter().zip(grads.tensors()) {
        let values = match spec.kind {
            TensorKind::Buffer => continue,
            // one gradient row per batch row (a fresh carry takes the batch's ids): the table's
            TensorKind::SparseEmbedding => {
                scatter_puzzle_rows(&be.download_f32(g), &batch.puzzle_ids, spec.shape[0], spec.shape[1])
            }
            TensorKind::Trainable => be.download_f32(g),
        };
        out.push(NamedTensor::f32(spec.name, spec.shape, values));
    }
    be.check()?;
    Ok(out)
}

/// `--out` of `hrm forward` and `hrm grad`, checked before any work.
fn check_output(out: &Path, checkpoint: &Path, config: Option<&Path>, batch: &Path) -> Result<()> {
    let mut inputs = vec![("--checkpoint", checkpoint), ("--batch", batch)];
    inputs.extend(config.map(|c| ("--config", c)));
    crate::fsutil::check_output("--out", out, &inputs)
}

/// `hrm forward`
pub fn run_forward(
    checkpoint: &Path,
    config: Option<&Path>,
    batch: &Path,
    segments: usize,
    out: &Path,
    device: DeviceChoice,
) -> Result<()> {
    if segments == 0 {
        bail!("--segments must be at least 1");
    }
    check_output(out, checkpoint, config, batch)?;
    let (cfg, params) = load_model(checkpoint, config)?;
    let path = batch;
    let batch = load_batch(batch, &cfg)?;
    check_batch_memory(path, &cfg, Purpose::Eval { batch: batch.len() }, device)?;
    let tensors = crate::with_backend!(device, |be| {
        forward_outputs_of(be, &Hrm::new(be, &cfg, &params).with_origin(checkpoint), &batch, segments)?
    });
    write_tensors(out, &tensors, None)?;
    if let Some(t) = tensors.iter().find(|t| t.name == "exact_correct_per_segment")
        && let crate::model::checkpoint::TensorData::U8(v) = &t.data
    {
        let b = batch.len();
        let last = &v[(segments - 1) * b..];
        // A puzzle whose labels are all 0 (ignored) has nothing to be right about: it is left
        // out of the count rather than called correct.
        let n = batch.labels.as_ref().map_or(0, |l| l.len() / b.max(1));
        let labeled: Vec<bool> = (0..b)
            .map(|i| batch.labels.as_ref().is_some_and(|l| l[i * n..(i + 1) * n].iter().any(|&x| x != 0)))
            .collect();
        let count = labeled.iter().filter(|&&l| l).count();
        if count == 0 {
            eprintln!("exact accuracy: not measured (every label of the batch is 0, i.e. ignored)");
        } else {
            let right = last.iter().zip(&labeled).filter(|&(&x, &l)| l && x != 0).count();
            let unlabeled =
                if count < b { format!(" ({} without labels left out)", b - count) } else { String::new() };
            eprintln!("exact accuracy after {segments} segments: {right}/{count}{unlabeled}");
        }
    }
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// `hrm grad`
pub fn run_grad(
    checkpoint: &Path,
    config: Option<&Path>,
    batch: &Path,
    out: &Path,
    device: DeviceChoice,
) -> Result<()> {
    check_output(out, checkpoint, config, batch)?;
    let (cfg, params) = load_model(checkpoint, config)?;
    let batch_data = load_batch(batch, &cfg)?;
    check_batch_memory(
        batch,
        &cfg,
        Purpose::Train { batch: batch_data.len(), ema: false, saved: Default::default() },
        device,
    )?;
    if batch_data.labels.is_none() {
        bail!("{}: `hrm grad` needs a 'labels' tensor in the batch", batch.display());
    }
    let tensors = crate::with_backend!(device, |be| grad_outputs(be, &cfg, &params, &batch_data)?);
    write_tensors(out, &tensors, None)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}
