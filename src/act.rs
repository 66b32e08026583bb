//! Adaptive computation time around the segment: the carry that persists across steps, the
//! halting rule with exploration, the target-Q segment, the losses with the reference's
//! normalization, and the gradient of (total loss / global batch size).

use crate::backend::cpu::loss::{bce_with_logits, sigmoid};
use crate::backend::{Backend, LmLossOut};
use crate::hrm::{Heads, Hrm, Workspace};
use crate::model::ParamSet;
use rand::Rng;

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

    /// Copies the current puzzles to the backend and embeds them.
    fn embed(&mut self, be: &B, model: &Hrm<B>) {
        be.write_i32(&self.data.inputs, &mut self.ws.inputs.tokens);
        be.write_i32(&self.data.puzzle_ids, &mut self.ws.inputs.puzzle_ids);
        model.embed(be, &mut self.ws);
    }

    /// Step 1 of an ACT step: halted rows restart from H_init/L_init with the new batch's row;
    /// the others keep their state and puzzle.
    pub fn take_new_data(&mut self, be: &B, model: &Hrm<B>, new: &Batch) {
        let n = model.cfg.seq_len;
        let halted = self.halted.clone();
        model.reset(be, &mut self.z_h, true, &halted);
        model.reset(be, &mut self.z_l, false, &halted);
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

/// One eval-mode ACT step (halting only at `halt_max_steps`, no exploration, no target).
pub fn eval_step<B: Backend>(be: &B, model: &Hrm<B>, carry: &mut Carry<B>, new: &Batch) -> EvalSegment {
    carry.take_new_data(be, model, new);
    carry.embed(be, model);
    let heads = model.segment(be, &mut carry.ws, &mut carry.z_h, &mut carry.z_l, false);
    for (b, s) in carry.steps.iter_mut().enumerate() {
        *s += 1;
        carry.halted[b] = *s as usize >= model.cfg.halt_max_steps;
    }
    let scored = carry.data.labels.as_ref().map(|labels| {
        be.write_i32(labels, &mut carry.ws.labels);
        be.lm_loss(carry.ws.logits(), &carry.ws.labels, model.cfg.vocab_size, model.cfg.seq_len, 0.0, None)
    });
    EvalSegment { heads, scored }
}

/// Halting exploration: per row, with probability `prob`, a minimum number of steps drawn
/// uniformly from [2, halt_max_steps] (0 = none).
pub fn draw_min_halt_steps(rng: &mut impl Rng, batch: usize, prob: f64, max_steps: usize) -> Vec<u32> {
    (0..batch)
        .map(|_| {
            let explore = rng.gen_range(0.0..1.0) < prob;
            let k = rng.gen_range(2..=max_steps.max(2)) as u32;
            if explore { k } else { 0 }
        })
        .collect()
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

/// Losses and metrics of one training step (sums over rows, as the reference reports them).
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

/// One training step: take new data into halted rows, run the gradient-carrying segment,
/// decide halting (exploration minimums given, one per row), run the target-Q segment, compute
/// the losses and accumulate the gradient of (total loss / `global_batch`) into `grads`.
pub fn train_step<B: Backend>(
    be: &B,
    model: &Hrm<B>,
    carry: &mut Carry<B>,
    new: &Batch,
    min_halt: &[u32],
    global_batch: usize,
    grads: &mut ParamSet<B::F32>,
) -> StepStats {
    let cfg = &model.cfg;
    carry.take_new_data(be, model, new);
    let batch = carry.steps.len();
    let labels_host = carry.data.labels.as_ref().expect("training needs labels");
    be.write_i32(labels_host, &mut carry.ws.labels);
    carry.embed(be, model);
    let heads = model.segment(be, &mut carry.ws, &mut carry.z_h, &mut carry.z_l, true);
    carry.steps.iter_mut().for_each(|s| *s += 1);
    carry.halted = halting(&carry.steps, &heads.q_halt, &heads.q_continue, min_halt, cfg.halt_max_steps);

    // The LM loss and its gradient (of lm / global_batch), before the target segment reuses
    // the logits buffer.
    let scale = 1.0 / global_batch as f64;
    let lm = {
        let (logits, labels, dlogits) =
            carry.ws.loss_views().expect("training buffers exist after a kept segment");
        be.lm_loss(logits, labels, cfg.vocab_size, cfg.seq_len, scale, Some(dlogits))
    };

    // Target Q: one more segment from the new carry with the same data (no gradient).
    let next = model.target_segment(be, &mut carry.ws, &carry.z_h, &carry.z_l);
    let target = target_q_continue(&carry.steps, &next.q_halt, &next.q_continue, cfg.halt_max_steps);

    // Q losses; gradients of 0.5 (q_halt + q_continue) / global_batch.
    let seq_correct: Vec<f32> = lm.exact.iter().map(|&e| e as u8 as f32).collect();
    let mut dq_halt = vec![0.0; batch];
    let mut dq_continue = vec![0.0; batch];
    let q_halt_loss = bce_with_logits(&heads.q_halt, &seq_correct, 0.5 * scale, Some(&mut dq_halt));
    let q_continue_loss = bce_with_logits(&heads.q_continue, &target, 0.5 * scale, Some(&mut dq_continue));
    model.segment_bwd(be, &mut carry.ws, &dq_halt, &dq_continue, grads);

    let mut st = StepStats {
        lm_loss: lm.loss_per_row.iter().sum(),
        q_halt_loss,
        q_continue_loss,
        q_halt: heads.q_halt.clone(),
        q_continue: heads.q_continue.clone(),
        target_q_continue: target,
        halted: carry.halted.clone(),
        ..Default::default()
    };
    for b in 0..batch {
        if carry.halted[b] && lm.n_valid[b] > 0 {
            st.count += 1;
            st.exact_correct += lm.exact[b] as usize;
            st.token_accuracy_sum += lm.n_correct[b] as f64 / lm.n_valid[b] as f64;
            st.steps_sum += carry.steps[b] as u64;
            st.q_halt_correct += ((heads.q_halt[b] >= 0.0) == lm.exact[b]) as usize;
        }
    }
    st
}
