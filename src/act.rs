//! Adaptive computation time around the segment: the carry that persists across steps, the
//! halting rule with exploration, the target-Q segment, the losses with the reference's
//! normalization, and the gradient of (total loss / global batch size).
//!
//! A training step keeps the ACT state where the model runs (`Backend::ActState`): new data
//! into halted rows, exploration, halting, target-Q, losses, gradients of the q logits and the
//! metrics are backend ops, so a step on a GPU reads nothing back; the host reads the metrics
//! every log interval ([`Backend::act_report`]). Evaluation keeps steps and halting on the host
//! (its callers decide per row what runs next).

use crate::backend::cpu::halting::{explore_row, explore_threshold};
use crate::backend::cpu::loss::sigmoid;
use crate::backend::{ActReport, Backend, EvalRows, LmLossOut};
use crate::hrm::{Heads, Hrm, Workspace};
use crate::model::ParamSet;

/// A batch of puzzles as token ids (see the spec: 1 = blank, 2..10 = digits; labels 0 = PAD).
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    /// [batch, seq_len]
    pub inputs: Vec<i32>,
    /// [batch]
    pub puzzle_ids: Vec<i32>,
    /// [batch, seq_len]; 0 marks an ignored position.
    pub labels: Option<Vec<i32>>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.puzzle_ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.puzzle_ids.is_empty()
    }
}

/// The ACT carry: recurrent state, per-row step counts and halting flags, current puzzles.
/// Evaluation keeps `steps`, `halted` and `data` on the host; training keeps them in the
/// workspace's ACT state and inputs, and [`Carry::pull`] copies them here (checkpoints, tests).
pub struct Carry<B: Backend> {
    pub z_h: B::Act,
    pub z_l: B::Act,
    pub steps: Vec<u32>,
    pub halted: Vec<bool>,
    pub data: Batch,
    /// The buffers of this batch shape (not state: rebuilt, not saved, on resume).
    pub ws: Workspace<B>,
}

impl<B: Backend> Carry<B> {
    /// A fresh carry: every row halted, so the first step takes the whole batch.
    pub fn fresh(be: &B, model: &Hrm<B>, batch: usize) -> Self {
        let cfg = &model.cfg;
        let n = batch * cfg.total_seq_len() * cfg.hidden_size;
        Carry {
            z_h: be.zeros(n),
            z_l: be.zeros(n),
            steps: vec![0; batch],
            halted: vec![true; batch],
            data: Batch {
                inputs: vec![0; batch * cfg.seq_len],
                puzzle_ids: vec![0; batch],
                labels: Some(vec![0; batch * cfg.seq_len]),
            },
            ws: Workspace::new(be, cfg, batch),
        }
    }

    /// The last segment's logits [batch * seq_len, vocab].
    pub fn logits(&self) -> &B::Act {
        self.ws.logits()
    }

    /// Copies the current puzzles (host) to the backend and embeds them.
    fn embed(&mut self, be: &B, model: &Hrm<B>) {
        be.write_i32(&self.data.inputs, &mut self.ws.inputs.tokens);
        be.write_i32(&self.data.puzzle_ids, &mut self.ws.inputs.puzzle_ids);
        model.embed(be, &mut self.ws);
    }

    /// Copies the training state of the backend (steps, halting, current puzzles) to the host
    /// fields.
    pub fn pull(&mut self, be: &B) {
        let rows = be.act_rows(&self.ws.act);
        self.steps = rows.steps;
        self.halted = rows.halted;
        self.data.inputs = be.download_i32(&self.ws.inputs.tokens);
        self.data.puzzle_ids = be.download_i32(&self.ws.inputs.puzzle_ids);
        self.data.labels = Some(be.download_i32(&self.ws.labels));
    }

    /// Copies the host fields to the backend (a carry restored from a checkpoint).
    pub fn push(&mut self, be: &B) {
        be.act_set(&mut self.ws.act, &self.steps, &self.halted);
        be.write_i32(&self.data.inputs, &mut self.ws.inputs.tokens);
        be.write_i32(&self.data.puzzle_ids, &mut self.ws.inputs.puzzle_ids);
        if let Some(l) = &self.data.labels {
            be.write_i32(l, &mut self.ws.labels);
        }
    }

    /// Step 1 of an evaluation ACT step (host bookkeeping): halted rows restart from
    /// H_init/L_init with the new batch's row; the others keep their state and puzzle.
    pub fn take_new_data(&mut self, be: &B, model: &Hrm<B>, new: &Batch) {
        let n = model.cfg.seq_len;
        let halted = self.halted.clone();
        be.act_set(&mut self.ws.act, &self.steps, &halted);
        model.reset(be, &mut self.z_h, true, &self.ws.act);
        model.reset(be, &mut self.z_l, false, &self.ws.act);
        for (b, _) in halted.iter().enumerate().filter(|(_, h)| **h) {
            self.steps[b] = 0;
            self.data.inputs[b * n..(b + 1) * n].copy_from_slice(&new.inputs[b * n..(b + 1) * n]);
            self.data.puzzle_ids[b] = new.puzzle_ids[b];
            match (&mut self.data.labels, &new.labels) {
                (Some(dst), Some(src)) => dst[b * n..(b + 1) * n].copy_from_slice(&src[b * n..(b + 1) * n]),
                (labels, None) => *labels = None,
                (None, Some(_)) => {}
            }
        }
    }
}

/// Result of one evaluation segment (the logits are in the carry: [`Carry::logits`]).
pub struct EvalSegment {
    pub heads: Heads,
    /// Argmax, exact flags and per-row token accuracy (only when labels are present).
    pub scored: Option<LmLossOut>,
}

/// The model's outputs must be finite: finite but huge weights (a corrupt or foreign
/// checkpoint) overflow inside the model to NaN, and answers read from NaN logits would be
/// scored as plain wrong answers. The q logits are the check: they are read back anyway, and
/// come from the hidden state after attention has mixed every position into the first, so a
/// NaN or infinity anywhere in the hidden state (the source of NaN logits) shows in them.
pub fn check_outputs<B: Backend>(model: &Hrm<B>, q_halt: &[f32], q_continue: &[f32]) -> anyhow::Result<()> {
    let bad = q_halt.iter().zip(q_continue).filter(|(h, c)| !(h.is_finite() && c.is_finite())).count();
    if bad == 0 {
        return Ok(());
    }
    let who = model.origin().map_or(String::new(), |o| format!("{o}: "));
    anyhow::bail!(
        "{who}the model's outputs are non-finite (NaN/inf) on {bad} of the {} puzzles of a batch: \
         are its weights too large or corrupt?",
        q_halt.len()
    )
}

/// Whether a model halts on these q logits: q_halt > 0 when `halt_at_zero` (TRM's
/// `no_ACT_continue`), else q_halt > q_continue (HRM).
pub fn wants_halt(halt_at_zero: bool, q_halt: f32, q_continue: f32) -> bool {
    if halt_at_zero { q_halt > 0.0 } else { q_halt > q_continue }
}

/// One eval-mode ACT step (halting only at `halt_max_steps`, no exploration, no target).
/// Non-finite outputs are an error ([`check_outputs`]).
pub fn eval_step<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    carry: &mut Carry<B>,
    new: &Batch,
) -> anyhow::Result<EvalSegment> {
    carry.take_new_data(be, model, new);
    carry.embed(be, model);
    model.segment(be, &mut carry.ws, &mut carry.z_h, &mut carry.z_l, false);
    let heads = carry.ws.heads(be);
    check_outputs(model, &heads.q_halt, &heads.q_continue)?;
    for (b, s) in carry.steps.iter_mut().enumerate() {
        *s += 1;
        carry.halted[b] = *s as usize >= model.cfg.halt_max_steps;
    }
    let scored = carry.data.labels.as_ref().map(|labels| {
        be.write_i32(labels, &mut carry.ws.labels);
        be.lm_loss(carry.ws.logits(), &carry.ws.labels, model.cfg.vocab_size, model.cfg.seq_len, 0.0, None)
    });
    Ok(EvalSegment { heads, scored })
}

/// Runs `segments` segments on every row of `batch` from a fresh start, without halting
/// before the last (evaluation as the reference does it), entirely on the backend: the batch
/// is uploaded and embedded once; each segment (the no-grad updates, the heads, the scoring
/// and the step count) is the same ops every time, so with `graphs` a device backend records
/// it once and replays it; the results are read back once, at the end. The same numbers as
/// `segments` calls of [`eval_step`] (which reads back after each). `carry` must have the
/// batch's size; its host fields end as after those calls. Non-finite outputs are an error
/// ([`check_outputs`]).
pub fn infer_segments<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    carry: &mut Carry<B>,
    batch: &Batch,
    segments: usize,
    graphs: bool,
) -> anyhow::Result<EvalRows> {
    let cfg = &model.cfg;
    let (rows, n) = (batch.len(), cfg.seq_len);
    assert_eq!(carry.ws.batch(), rows, "infer_segments: the carry is for another batch size");
    let ws = &mut carry.ws;
    be.write_i32(&batch.inputs, &mut ws.inputs.tokens);
    be.write_i32(&batch.puzzle_ids, &mut ws.inputs.puzzle_ids);
    match &batch.labels {
        Some(l) => be.write_i32(l, &mut ws.labels),
        None => be.write_i32(&vec![0; rows * n], &mut ws.labels),
    }
    be.act_set(&mut ws.act, &vec![0; rows], &vec![true; rows]);
    model.reset(be, &mut carry.z_h, true, &ws.act);
    model.reset(be, &mut carry.z_l, false, &ws.act);
    model.embed(be, ws);
    let mut record = graphs;
    for seg in 0..segments {
        // The first segment on this workspace runs directly (it makes the scoring buffers);
        // every later one replays it.
        let key = (record && (seg > 0 || carry.ws.infer_warm)).then(|| {
            let mut k = step_buffer_ids(be, carry);
            k.extend([u64::MAX, segments as u64]); // not a training step's key
            k
        });
        let mut ops = || {
            model.segment(be, &mut carry.ws, &mut carry.z_h, &mut carry.z_l, false);
            let (logits, labels, st) = carry.ws.score_views();
            be.act_eval_score(logits, labels, cfg.vocab_size, n, st, segments);
            be.act_halt(st, cfg.halt_max_steps);
        };
        match &key {
            Some(k) => be.replay_or_record(k, &mut ops),
            None => ops(),
        }
        carry.ws.infer_warm = true;
        if let Some(k) = key {
            // A replay does not move the host's buffer handles (see `Trainer::train_step`).
            record = step_buffer_ids(be, carry)[..] == k[..k.len() - 2];
        }
    }
    let mut out = be.act_eval_read(&carry.ws.act, n, segments);
    if batch.labels.is_none() {
        out.exact_per_segment.clear();
    }
    carry.steps = vec![segments as u32; rows];
    carry.halted = vec![true; rows];
    carry.data = batch.clone();
    check_outputs(model, &out.q_halt, &out.q_continue)?;
    Ok(out)
}

/// The exploration minimums of a training step (the reference draws `(rand < prob) *
/// randint(2, halt_max_steps + 1)` per row): a counter-based draw from the run's seed and the
/// step, the same on every backend (`Backend::act_explore` draws it where the model runs).
pub fn explore_min_halt(seed: u64, step: u64, batch: usize, prob: f64, max_steps: usize) -> Vec<u32> {
    let key = crate::backend::cpu::halting::explore_key(seed, step);
    let t = explore_threshold(prob);
    (0..batch).map(|b| explore_row(key, b, t, max_steps) as u32).collect()
}

/// The halting rule of a training step: halt at the step limit or when q_halt > q_continue,
/// but never before the row's exploration minimum.
pub fn halting(
    steps: &[u32],
    q_halt: &[f32],
    q_continue: &[f32],
    min_halt: &[u32],
    max_steps: usize,
) -> Vec<bool> {
    (0..steps.len())
        .map(|b| {
            let last = steps[b] as usize >= max_steps;
            let mut h = last;
            if max_steps > 1 {
                h |= q_halt[b] > q_continue[b];
                h &= steps[b] >= min_halt[b];
            }
            h
        })
        .collect()
}

/// `target_q_continue = sigmoid(last step ? next_q_halt : max(next_q_halt, next_q_continue))`.
pub fn target_q_continue(
    steps: &[u32],
    next_halt: &[f32],
    next_continue: &[f32],
    max_steps: usize,
) -> Vec<f32> {
    (0..steps.len())
        .map(|b| {
            let last = steps[b] as usize >= max_steps;
            sigmoid(if last { next_halt[b] } else { next_halt[b].max(next_continue[b]) })
        })
        .collect()
}

/// Losses and per-row results of one training step, read back from the backend (tests,
/// validation against the reference, benches); the training loop reads only [`ActReport`]s.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepStats {
    pub lm_loss: f64,
    pub q_halt_loss: f64,
    pub q_continue_loss: f64,
    /// Rows that halted this step with at least one valid label (the reference's "count").
    pub count: usize,
    /// Of those: exactly right.
    pub exact_correct: usize,
    /// Of those: sum of per-row token accuracy.
    pub token_accuracy_sum: f64,
    /// Of those: sum of steps taken.
    pub steps_sum: u64,
    /// Of those: (q_halt >= 0) agrees with correctness.
    pub q_halt_correct: usize,
    pub q_halt: Vec<f32>,
    pub q_continue: Vec<f32>,
    pub target_q_continue: Vec<f32>,
    pub halted: Vec<bool>,
}

impl StepStats {
    pub fn total_loss(&self) -> f64 {
        self.lm_loss + 0.5 * (self.q_halt_loss + self.q_continue_loss)
    }
}

/// Where a training step's exploration minimums come from.
#[derive(Clone, Copy, Debug)]
pub enum Exploration<'a> {
    /// Drawn by the backend from a key ([`crate::backend::cpu::halting::explore_key`]); row b
    /// of this batch draws as row `first_row + b` of the global batch (data-parallel ranks).
    Seeded { key: u64, prob: f64, first_row: usize },
    /// Given per row (validation against fixed draws).
    Fixed(&'a [u32]),
}

/// The part of a training step that changes from step to step, enqueued before the rest: the
/// new batch (uploaded, not yet taken), the exploration minimums and the step number.
pub fn train_step_inputs<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    carry: &mut Carry<B>,
    new: &Batch,
    explore: Exploration<'_>,
    step: u32,
) {
    let ws = &mut carry.ws;
    let labels = new.labels.as_ref().expect("training needs labels");
    be.write_i32(&new.inputs, &mut ws.new.tokens);
    be.write_i32(&new.puzzle_ids, &mut ws.new.puzzle_ids);
    be.write_i32(labels, &mut ws.new.labels);
    match explore {
        Exploration::Seeded { key, prob, first_row } => {
            be.act_explore(&mut ws.act, key, prob, model.cfg.halt_max_steps, first_row)
        }
        Exploration::Fixed(min_halt) => be.act_set_min_halt(&mut ws.act, min_halt),
    }
    be.act_set_step(&mut ws.act, step);
}

/// The rest of a training step, the same ops with the same arguments every step (so a backend
/// may record it once as a graph and replay it): halted rows take the uploaded batch and
/// restart, the gradient-carrying segment, the halting decision, the LM loss, the target-Q
/// segment, the Q losses, and the gradient of (total loss / `global_batch`) accumulated into
/// `grads`. Nothing is read back to the host.
pub fn train_step_ops<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    carry: &mut Carry<B>,
    global_batch: usize,
    grads: &mut ParamSet<B::F32>,
) {
    let cfg = &model.cfg;
    let ws = &mut carry.ws;
    model.reset(be, &mut carry.z_h, true, &ws.act);
    model.reset(be, &mut carry.z_l, false, &ws.act);
    be.act_take_new(
        &mut ws.act,
        &ws.new.tokens,
        &mut ws.inputs.tokens,
        &ws.new.puzzle_ids,
        &mut ws.inputs.puzzle_ids,
        &ws.new.labels,
        &mut ws.labels,
        cfg.seq_len,
    );
    model.embed(be, ws);
    model.segment(be, ws, &mut carry.z_h, &mut carry.z_l, true);
    if cfg.no_act_continue() {
        be.act_halt_no_continue(&mut ws.act, cfg.halt_max_steps);
    } else {
        be.act_halt(&mut ws.act, cfg.halt_max_steps);
    }

    // The LM loss and its gradient (of lm / global_batch), before the target segment reuses
    // the logits buffer.
    let scale = 1.0 / global_batch as f64;
    {
        let v = ws.loss_views().expect("training buffers exist after a kept segment");
        be.lm_loss_rows(v.logits, v.labels, cfg.vocab_size, cfg.seq_len, scale, v.dlogits, v.act);
    }
    if cfg.no_act_continue() {
        // TRM: no target segment; the q_halt loss alone, gradient of 0.5 q_halt / global_batch.
        be.act_q_halt_loss(&mut ws.act, 0.5 * scale);
    } else {
        // Target Q: one more segment from the new carry with the same data (no gradient).
        model.target_segment(be, ws, &carry.z_h, &carry.z_l);
        // Q losses; gradients of 0.5 (q_halt + q_continue) / global_batch.
        be.act_q_loss(&mut ws.act, cfg.halt_max_steps, 0.5 * scale);
    }
    model.segment_bwd(be, ws, grads);
}

/// One training step, entirely on the backend ([`train_step_inputs`] then [`train_step_ops`]);
/// `step` (1-based) names the step in the non-finite guard.
#[allow(clippy::too_many_arguments)]
pub fn train_step_device<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    carry: &mut Carry<B>,
    new: &Batch,
    explore: Exploration<'_>,
    global_batch: usize,
    grads: &mut ParamSet<B::F32>,
    step: u32,
) {
    train_step_inputs(be, model, carry, new, explore, step);
    train_step_ops(be, model, carry, global_batch, grads);
}

/// Identities of the buffers a training step trades places with (the carry and the
/// workspace's ping-pong buffers): a recorded step is valid for the arrangement it began with.
pub fn step_buffer_ids<B: Backend>(be: &B, carry: &Carry<B>) -> Vec<u64> {
    let mut ids = vec![carry.ws.uid(), be.act_id(&carry.z_h), be.act_id(&carry.z_l)];
    ids.extend(carry.ws.swap_ids(be));
    ids
}

/// [`train_step_device`] with fixed exploration minimums, then the step's losses and per-row
/// results read back (and the carry's host fields updated). Reads and resets the backend's
/// metric accumulators.
pub fn train_step<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    carry: &mut Carry<B>,
    new: &Batch,
    min_halt: &[u32],
    global_batch: usize,
    grads: &mut ParamSet<B::F32>,
) -> StepStats {
    train_step_device(be, model, carry, new, Exploration::Fixed(min_halt), global_batch, grads, 1);
    let r: ActReport = be.act_report(&mut carry.ws.act);
    let rows = be.act_rows(&carry.ws.act);
    carry.pull(be);
    StepStats {
        lm_loss: r.lm_loss,
        q_halt_loss: r.q_halt_loss,
        q_continue_loss: r.q_continue_loss,
        count: r.count as usize,
        exact_correct: r.exact_correct as usize,
        token_accuracy_sum: r.token_accuracy_sum,
        steps_sum: r.steps_sum,
        q_halt_correct: r.q_halt_correct as usize,
        q_halt: rows.q_halt,
        q_continue: rows.q_continue,
        target_q_continue: rows.target_q_continue,
        halted: rows.halted,
    }
}
