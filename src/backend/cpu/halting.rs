//! ACT bookkeeping of a training step, as the backend keeps it (the CPU version is the
//! reference of kernels/halting.cu): new data into halted rows, the exploration draw, the
//! halting rule, the target-Q, the Q losses and their gradients, the window's metrics and the
//! non-finite guard. A step reads nothing back; the host reads [`ActReport`] every log interval.

use super::loss::{LmLossOut, bce_with_logits, sigmoid};

/// "No step / no tensor" in the guard status.
pub const NONE: i32 = i32::MAX;

/// Which q logits a head writes: the gradient-carrying segment's or the target segment's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QSlot {
    Current,
    Target,
}

/// The ACT state of one batch on the CPU (the CUDA backend keeps the same on the device).
#[derive(Clone, Debug)]
pub struct CpuActState {
    pub steps: Vec<i32>,
    pub halted: Vec<u8>,
    pub min_halt: Vec<i32>,
    /// [batch, {halt, continue}] of the current and of the target segment
    pub q: Vec<f32>,
    pub q_next: Vec<f32>,
    /// gradients of the q logits, same layout
    pub dq: Vec<f32>,
    pub target: Vec<f32>,
    /// per-row LM loss results of the step
    pub lm: LmLossOut,
    /// inference: the exact flag of each row per segment [batch, segments]
    pub exact_hist: Vec<u8>,
    /// see [`ActReport::from_raw`]
    pub metrics: [f64; METRICS],
    /// [first bad step, loss bad, first bad tensor, unused]
    pub status: [i32; 4],
    /// the number of the step running (see `Backend::act_set_step`)
    pub step_now: i32,
}

impl CpuActState {
    pub fn new(batch: usize) -> Self {
        CpuActState {
            steps: vec![0; batch],
            halted: vec![1; batch],
            min_halt: vec![0; batch],
            q: vec![0.0; 2 * batch],
            q_next: vec![0.0; 2 * batch],
            dq: vec![0.0; 2 * batch],
            target: vec![0.0; batch],
            lm: LmLossOut {
                loss_per_row: vec![0.0; batch],
                exact: vec![false; batch],
                n_correct: vec![0; batch],
                n_valid: vec![0; batch],
                argmax: Vec::new(),
            },
            exact_hist: Vec::new(),
            metrics: [0.0; METRICS],
            status: [NONE, 0, NONE, 0],
            step_now: 0,
        }
    }
    pub fn batch(&self) -> usize {
        self.steps.len()
    }
    pub fn q_slot(&mut self, slot: QSlot) -> &mut Vec<f32> {
        match slot {
            QSlot::Current => &mut self.q,
            QSlot::Target => &mut self.q_next,
        }
    }
}

/// Number of metric accumulators.
pub const METRICS: usize = 9;

/// Sums over the training steps since the last read, and the guard's findings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActReport {
    pub steps: u64,
    pub lm_loss: f64,
    pub q_halt_loss: f64,
    pub q_continue_loss: f64,
    /// halted rows with at least one valid label (the reference's "count")
    pub count: u64,
    pub exact_correct: u64,
    pub token_accuracy_sum: f64,
    pub steps_sum: u64,
    /// halted rows where (q_halt >= 0) agrees with correctness
    pub q_halt_correct: u64,
    /// the first step with a non-finite loss or gradient (its update and all later ones were
    /// skipped)
    pub bad_step: Option<u32>,
    pub bad_loss: bool,
    /// index (in `tensor_specs` order) of the first tensor with a non-finite gradient
    pub bad_tensor: Option<usize>,
}

impl ActReport {
    /// From the raw accumulators `[steps, lm, q_halt, q_continue, count, exact, token
    /// accuracy, halt steps, q ok]` and the guard status.
    pub fn from_raw(m: &[f64; METRICS], status: &[i32; 4]) -> Self {
        let opt = |v: i32| (v != NONE && v >= 0).then_some(v);
        ActReport {
            steps: m[0] as u64,
            lm_loss: m[1],
            q_halt_loss: m[2],
            q_continue_loss: m[3],
            count: m[4] as u64,
            exact_correct: m[5] as u64,
            token_accuracy_sum: m[6],
            steps_sum: m[7] as u64,
            q_halt_correct: m[8] as u64,
            bad_step: opt(status[0]).map(|s| s as u32),
            bad_loss: status[1] != 0,
            bad_tensor: opt(status[2]).map(|t| t as usize),
        }
    }
    pub fn total_loss(&self) -> f64 {
        self.lm_loss + 0.5 * (self.q_halt_loss + self.q_continue_loss)
    }
}

/// splitmix64's finaliser.
pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The exploration key of a training step: a function of the run's seed and the step only,
/// so a resumed run draws what the uninterrupted one drew.
pub fn explore_key(seed: u64, step: u64) -> u64 {
    mix64(mix64(seed ^ 0x6578_706c_6f72_6521).wrapping_add(step))
}

/// `prob` as a threshold on 53-bit uniform integers.
pub fn explore_threshold(prob: f64) -> u64 {
    (prob.clamp(0.0, 1.0) * (1u64 << 53) as f64) as u64
}

/// Row `b`'s exploration minimum: with probability `prob` a number of steps uniform in
/// [2, max(max_steps, 2)], else 0 (the reference's `(rand < prob) * randint(2, max + 1)`).
pub fn explore_row(key: u64, b: usize, threshold: u64, max_steps: usize) -> i32 {
    let h1 = mix64(key ^ mix64(2 * b as u64));
    let h2 = mix64(key ^ mix64(2 * b as u64 + 1));
    let span = max_steps.max(2) as u64 - 1;
    let k = 2 + (((h2 >> 32) * span) >> 32) as i32;
    if (h1 >> 11) < threshold { k } else { 0 }
}

/// Halted rows take the new batch's row and restart their step count.
#[allow(clippy::too_many_arguments)]
pub fn take_new(
    st: &mut CpuActState,
    new_tokens: &[i32],
    tokens: &mut [i32],
    new_ids: &[i32],
    ids: &mut [i32],
    new_labels: &[i32],
    labels: &mut [i32],
    seq_len: usize,
) {
    for b in (0..st.batch()).filter(|&b| st.halted[b] != 0) {
        let r = b * seq_len..(b + 1) * seq_len;
        tokens[r.clone()].copy_from_slice(&new_tokens[r.clone()]);
        labels[r.clone()].copy_from_slice(&new_labels[r]);
        ids[b] = new_ids[b];
        st.steps[b] = 0;
    }
}

/// `steps += 1`; halt at the limit or when q_halt > q_continue, never before `min_halt`.
pub fn halt(st: &mut CpuActState, max_steps: usize) {
    halt_by(st, max_steps, |q_halt, q_continue| q_halt > q_continue);
}

/// `steps += 1` and halting at `max_steps`, or where `wants(q_halt, q_continue)` after the
/// row's exploration minimum.
fn halt_by(st: &mut CpuActState, max_steps: usize, wants: impl Fn(f32, f32) -> bool) {
    for b in 0..st.batch() {
        let s = st.steps[b] + 1;
        st.steps[b] = s;
        let mut h = s as usize >= max_steps;
        if max_steps > 1 {
            h |= wants(st.q[2 * b], st.q[2 * b + 1]);
            h &= s >= st.min_halt[b];
        }
        st.halted[b] = h as u8;
    }
}

/// TRM's training rule (`no_ACT_continue`): [`halt`] with q_halt > 0 (the sigmoid above 1/2)
/// in place of q_halt > q_continue.
pub fn halt_no_continue(st: &mut CpuActState, max_steps: usize) {
    halt_by(st, max_steps, |q_halt, _| q_halt > 0.0);
}

/// Inference: the exact flags of the segment just scored (`st.lm`) into column `steps[b]` of
/// the history [batch, max_segments] (grown to that size).
pub fn exact_hist(st: &mut CpuActState, max_segments: usize) {
    let batch = st.batch();
    if st.exact_hist.len() < batch * max_segments {
        st.exact_hist = vec![0; batch * max_segments];
    }
    for b in 0..batch {
        let s = st.steps[b];
        if s >= 0 && (s as usize) < max_segments {
            st.exact_hist[b * max_segments + s as usize] = st.lm.exact[b] as u8;
        }
    }
}

/// The inference results in the state (see `Backend::act_eval_read`).
pub fn eval_read(st: &CpuActState, segments: usize) -> crate::backend::EvalRows {
    let batch = st.batch();
    let cols = st.exact_hist.len() / batch.max(1);
    crate::backend::EvalRows {
        argmax: st.lm.argmax.clone(),
        exact_per_segment: (0..segments.min(cols))
            .map(|s| (0..batch).map(|b| st.exact_hist[b * cols + s] != 0).collect())
            .collect(),
        q_halt: st.q.iter().step_by(2).copied().collect(),
        q_continue: st.q.iter().skip(1).step_by(2).copied().collect(),
    }
}

/// Target-Q, the Q losses, their gradients (`grad_scale` times d loss / d q) and the step's
/// metrics added to the accumulators; a non-finite total loss marks the current step bad.
pub fn q_loss(st: &mut CpuActState, max_steps: usize, grad_scale: f64) {
    let step = st.step_now;
    let batch = st.batch();
    let (mut qh_logits, mut qc_logits) = (vec![0.0f32; batch], vec![0.0f32; batch]);
    let mut exact = vec![0.0f32; batch];
    for b in 0..batch {
        let last = st.steps[b] as usize >= max_steps;
        let (nh, nc) = (st.q_next[2 * b], st.q_next[2 * b + 1]);
        st.target[b] = sigmoid(if last { nh } else { nh.max(nc) });
        qh_logits[b] = st.q[2 * b];
        qc_logits[b] = st.q[2 * b + 1];
        exact[b] = st.lm.exact[b] as u8 as f32;
    }
    let (mut dh, mut dc) = (vec![0.0f32; batch], vec![0.0f32; batch]);
    let qh = bce_with_logits(&qh_logits, &exact, grad_scale, Some(&mut dh));
    let qc = bce_with_logits(&qc_logits, &st.target, grad_scale, Some(&mut dc));
    for b in 0..batch {
        st.dq[2 * b] = dh[b];
        st.dq[2 * b + 1] = dc[b];
    }
    record_losses(st, step, qh, qc);
}

/// The step's metrics (the LM loss, the Q losses `qh` and `qc`, and the halted rows' counts)
/// into the accumulators, and a non-finite total loss into the guard status.
fn record_losses(st: &mut CpuActState, step: i32, qh: f64, qc: f64) {
    let lm: f64 = st.lm.loss_per_row.iter().sum();
    let m = &mut st.metrics;
    m[0] += 1.0;
    m[1] += lm;
    m[2] += qh;
    m[3] += qc;
    for b in (0..st.steps.len()).filter(|&b| st.halted[b] != 0 && st.lm.n_valid[b] > 0) {
        m[4] += 1.0;
        m[5] += st.lm.exact[b] as u8 as f64;
        m[6] += st.lm.n_correct[b] as f64 / st.lm.n_valid[b] as f64;
        m[7] += st.steps[b] as f64;
        m[8] += ((st.q[2 * b] >= 0.0) == st.lm.exact[b]) as u8 as f64;
    }
    if !(lm + 0.5 * (qh + qc)).is_finite() && st.status[0] >= step {
        st.status[0] = step;
        st.status[1] = 1;
    }
}

/// TRM's Q loss: [`q_loss`] with the q_halt term only. The q_continue logit gets no loss and
/// a zero gradient (its weights then only decay, as in the reference); the metrics are
/// [`q_loss`]'s with q_continue's term 0.
pub fn q_halt_loss(st: &mut CpuActState, grad_scale: f64) {
    let step = st.step_now;
    let batch = st.batch();
    let qh_logits: Vec<f32> = (0..batch).map(|b| st.q[2 * b]).collect();
    let exact: Vec<f32> = (0..batch).map(|b| st.lm.exact[b] as u8 as f32).collect();
    let mut dh = vec![0.0f32; batch];
    let qh = bce_with_logits(&qh_logits, &exact, grad_scale, Some(&mut dh));
    st.target.fill(0.0);
    for (b, &d) in dh.iter().enumerate() {
        st.dq[2 * b] = d;
        st.dq[2 * b + 1] = 0.0;
    }
    record_losses(st, step, qh, 0.0);
}

/// Records the first tensor of `grads` with a NaN or infinity at the current step, unless an
/// earlier step is already recorded.
pub fn guard(st: &mut CpuActState, grads: &[&Vec<f32>]) {
    let step = st.step_now;
    if st.status[0] < step {
        return;
    }
    if let Some(t) = grads.iter().position(|g| g.iter().any(|x| !x.is_finite())) {
        st.status[0] = step;
        st.status[2] = st.status[2].min(t as i32);
    }
}

/// Reads the accumulators and the status, and zeroes the accumulators.
pub fn report(st: &mut CpuActState) -> ActReport {
    let r = ActReport::from_raw(&st.metrics, &st.status);
    st.metrics = [0.0; METRICS];
    r
}
