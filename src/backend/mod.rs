//! Compute backends. The model math (`crate::hrm`, `crate::act`) is written once over the
//! `Backend` trait; a backend implements each op with its forward and backward side by side.
//! `cpu` is the f32 reference every other backend is validated against; `cuda` runs the same
//! ops with our kernels and cuBLASLt in bf16 (also under the CPU emulation, for tests).
//!
//! Storage is typed, because a device keeps each kind of tensor in its own precision:
//! - [`Backend::Act`]: activations and the recurrent carry (bf16 on CUDA, f32 on the CPU);
//! - [`Backend::Param`]: parameters, f32 masters (CUDA adds a bf16 shadow that the GEMMs read
//!   and the optimizer rewrites after every step);
//! - [`Backend::F32`]: f32 buffers: gradients, optimizer moments, EMA, per-row statistics;
//! - [`Backend::I32`]: token ids, labels, puzzle ids.
//!
//! Ops do not return errors one by one: a device backend records the first failure (a launch
//! error, out of memory) and skips later work, and [`Backend::check`] reports it; the model
//! code calls it at step boundaries, as CUDA's own sticky errors work.

pub mod collective;
pub mod cpu;
pub mod cuda;

use anyhow::Result;

pub use cpu::embed::EmbedDims;
pub use cpu::halting::{ActReport, QSlot};
pub use cpu::loss::LmLossOut;
pub use cpu::optim::AdamHyper;

/// A buffer the device could not allocate. Buffers are not fallible in the [`Backend`] API
/// (nothing can stand in for one), so the backend unwinds with this payload; the binary's
/// `main` catches it and reports it as an ordinary error with exit status 1.
#[derive(Debug)]
pub struct DeviceOutOfMemory(pub String);

impl std::fmt::Display for DeviceOutOfMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Per-row ACT state read back from a backend (for checkpoints, tests and validation).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ActRows {
    pub steps: Vec<u32>,
    pub halted: Vec<bool>,
    pub min_halt: Vec<u32>,
    /// the gradient-carrying segment's q logits
    pub q_halt: Vec<f32>,
    pub q_continue: Vec<f32>,
    pub target_q_continue: Vec<f32>,
}

/// What inference segments left in the ACT state (see [`Backend::act_eval_score`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EvalRows {
    /// argmax token per position of the last scored segment [batch * seq_len]
    pub argmax: Vec<u8>,
    /// the exact flag of each row after each segment: [segment][row]
    pub exact_per_segment: Vec<Vec<bool>>,
    /// the last segment's q logits
    pub q_halt: Vec<f32>,
    pub q_continue: Vec<f32>,
}

/// How the dense optimizer step updates one tensor (the puzzle embedding table has its own
/// sparse step, [`Backend::puzzle_sign_sgd`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimRule {
    /// AdamATan2 with decoupled weight decay.
    Adam,
    /// Not trained (buffers).
    Frozen,
}

/// Scalars of one optimizer step over all tensors.
/// Rows and leading dimensions of a batched transpose: `y[b, c, r] = x[b, r, c]` for `batch`
/// matrices of `rows` x `cols`, x stored with rows of `x_ld` (>= cols; the columns past `cols`
/// are not read) and y with rows of `y_ld` (>= rows; its pad columns `rows..y_ld` written 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransposeDims {
    pub batch: usize,
    pub rows: usize,
    pub cols: usize,
    pub x_ld: usize,
    pub y_ld: usize,
}

/// TRM's token mixing in the transposed layout: `cols` (= batch x hidden) rows of `seq`
/// positions, stored `seq_ld` apart (see [`Backend::seq_row_len`]; the pad columns hold 0), and
/// the width `inter` of its SwiGLU. The token weights are `w_in` [2 inter, seq] and `w_out`
/// [seq, inter], as in the checkpoint, whatever `seq_ld` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenDims {
    pub cols: usize,
    pub seq: usize,
    pub seq_ld: usize,
    pub inter: usize,
}

impl TokenDims {
    /// Unpadded rows, the only layout the default token ops take.
    fn check_packed(&self, op: &str) {
        assert_eq!(self.seq, self.seq_ld, "{op}: this backend keeps rows of seq positions unpadded");
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OptimStep {
    pub adam: AdamHyper,
    /// 1-based AdamATan2 step
    pub step: u32,
    /// `ema = decay * ema + (1 - decay) * p` after the update, when given
    pub ema_decay: Option<f32>,
}

/// The ops the HRM needs, forward and backward paired. Shapes: activations are row-major
/// `[rows, width]` with rows = batch * sequence; `w` is a PyTorch `[out, in]` weight.
#[allow(clippy::too_many_arguments)]
pub trait Backend {
    type Act;
    type Param;
    type F32;
    type I32;
    /// The ACT state of one batch: step counts, halting flags, exploration minimums, q logits
    /// and their gradients, the step's LM loss per row, the window's metrics and the
    /// non-finite guard (kept where the model runs, so a training step reads nothing back).
    type ActState;

    fn name(&self) -> &'static str;
    /// Dense bf16 tensor-core peak of the device in FLOP/s, for MFU (`None`: not a GPU).
    fn peak_flops(&self) -> Option<f64> {
        None
    }
    /// Device memory in use now, in bytes (`None` where there is no separate device memory).
    fn device_memory_used(&self) -> Option<u64> {
        None
    }
    /// Device memory free now, in bytes, and the device's total (`None` where there is no
    /// separate device memory). The emulation answers too: its device has a capacity.
    fn device_memory_free(&self) -> Option<(u64, u64)> {
        None
    }
    /// The first error any op met since the backend was made (then every op is skipped),
    /// after waiting for the device to finish what was enqueued (a device reports some errors
    /// only when the work runs). Call it where the host needs the device's results anyway.
    fn check(&self) -> Result<()>;
    /// [`Backend::check`] without waiting for the device: the first error an op met when it
    /// was enqueued. A training step ends with this, so steps queue back to back; errors met
    /// while the device runs them show at the next [`Backend::check`] (a log point, a
    /// checkpoint, an evaluation, the end of the run).
    fn check_enqueued(&self) -> Result<()> {
        self.check()
    }
    /// An identity of an activation buffer (on a device, its address): recorded graphs are
    /// keyed by the buffers the carry holds, which the no-grad updates trade places with.
    fn act_id(&self, _a: &Self::Act) -> u64 {
        0
    }
    /// Runs `ops`, a sequence of ops that is the same every time it runs with the same `key`
    /// (same buffers, shapes and scalars), as a recorded graph: the first call for a key
    /// records it, then it is replayed with one launch. A backend without graphs runs the ops.
    fn replay_or_record(&self, _key: &[u64], ops: &mut dyn FnMut()) {
        ops()
    }
    /// Forgets the recorded graphs whose key begins with `owner` (a workspace's identity, see
    /// `Workspace::uid`): called when the workspace goes away, as its buffers may be reused.
    fn forget_graphs(&self, _owner: u64) {}

    // Memory.
    /// Activations of `n` elements, zero.
    fn zeros(&self, n: usize) -> Self::Act;
    fn upload_act(&self, host: &[f32]) -> Self::Act;
    fn download_act(&self, buf: &Self::Act) -> Vec<f32>;
    fn act_len(&self, buf: &Self::Act) -> usize;
    fn copy(&self, src: &Self::Act, dst: &mut Self::Act);
    /// Sets every element to zero.
    fn zero_act(&self, buf: &mut Self::Act);
    fn upload_param(&self, host: &[f32]) -> Self::Param;
    /// A table read only by row gathers (the puzzle embedding): a device backend keeps no bf16
    /// shadow of it (at ARC's million ids it would take a gigabyte for nothing).
    fn upload_table(&self, host: &[f32]) -> Self::Param {
        self.upload_param(host)
    }
    fn download_param(&self, p: &Self::Param) -> Vec<f32>;
    /// f32 buffer of `n` zeros.
    fn zeros_f32(&self, n: usize) -> Self::F32;
    fn upload_f32(&self, host: &[f32]) -> Self::F32;
    fn download_f32(&self, buf: &Self::F32) -> Vec<f32>;
    fn upload_i32(&self, host: &[i32]) -> Self::I32;
    /// Overwrites `buf` (of the same length) with `host`.
    fn write_i32(&self, host: &[i32], buf: &mut Self::I32);
    fn download_i32(&self, buf: &Self::I32) -> Vec<i32>;
    /// Sets every element to zero.
    fn zero_f32(&self, buf: &mut Self::F32);
    /// No NaN or infinity in the buffer (the training NaN guard).
    fn all_finite(&self, buf: &Self::F32) -> bool;
    /// The index of the first buffer holding a NaN or infinity (one read-back for all).
    fn first_non_finite(&self, bufs: &[&Self::F32]) -> Option<usize> {
        bufs.iter().position(|b| !self.all_finite(b))
    }
    /// `ema = decay * ema + (1 - decay) * p`
    fn ema_update(&self, ema: &mut Self::F32, p: &Self::Param, decay: f32);

    // Elementwise.
    /// `out = a + b`
    fn add(&self, a: &Self::Act, b: &Self::Act, out: &mut Self::Act);
    /// `a += b`
    fn add_inplace(&self, a: &mut Self::Act, b: &Self::Act);
    /// The L module's input with the input injection: `out = z + (z_h + x)`, the injection
    /// rounded as a separate add would round it (one pass on a device, where the two adds
    /// made two).
    fn add_injection(&self, z: &Self::Act, z_h: &Self::Act, x: &Self::Act, out: &mut Self::Act);
    /// `z += z_h + x`, as [`Backend::add_injection`] in place.
    fn add_injection_inplace(&self, z: &mut Self::Act, z_h: &Self::Act, x: &Self::Act);
    /// Rows `b` of `z` [batch, seq, width] that are halted in `st` become `init` [width] at
    /// every position.
    fn reset_rows(&self, z: &mut Self::Act, init: &Self::Param, st: &Self::ActState, width: usize);
    /// `dst[b, j] = src[b, start + j]` for j < n, rows of `width`; `src` is [batch, seq, width].
    fn gather_positions(
        &self,
        src: &Self::Act,
        dst: &mut Self::Act,
        seq: usize,
        start: usize,
        n: usize,
        width: usize,
    );
    /// The transpose of `gather_positions`, accumulating into `dsrc`.
    fn scatter_add_positions(
        &self,
        ddst: &Self::Act,
        dsrc: &mut Self::Act,
        seq: usize,
        start: usize,
        n: usize,
        width: usize,
    );

    // Linear (GEMM).
    /// `y[rows, dout] = x[rows, din] w^T`
    fn linear_fwd(
        &self,
        x: &Self::Act,
        w: &Self::Param,
        y: &mut Self::Act,
        rows: usize,
        din: usize,
        dout: usize,
    );
    /// `dx (+)= dy w`
    fn linear_bwd_x(
        &self,
        dy: &Self::Act,
        w: &Self::Param,
        dx: &mut Self::Act,
        rows: usize,
        din: usize,
        dout: usize,
        accumulate: bool,
    );
    /// `dw += dy^T x` (weight gradients always accumulate)
    fn linear_bwd_w(
        &self,
        dy: &Self::Act,
        x: &Self::Act,
        dw: &mut Self::F32,
        rows: usize,
        din: usize,
        dout: usize,
    );

    /// The Q head in f32 on position 0 of `z_h` [batch, seq, d]: per row `(q_halt, q_continue)
    /// = w z_h[b, 0] + bias`, into `slot` of the ACT state.
    fn q_head_fwd(
        &self,
        z_h: &Self::Act,
        w: &Self::Param,
        bias: &Self::Param,
        st: &mut Self::ActState,
        slot: QSlot,
        batch: usize,
        seq: usize,
        d: usize,
    );
    /// Backward of [`Backend::q_head_fwd`] from the q gradients in `st` (see
    /// [`Backend::act_q_loss`]): `dw += dq^T z_h[:, 0]`, `dbias += sum dq`, `dz_h[:, 0] += dq w`.
    fn q_head_bwd(
        &self,
        st: &Self::ActState,
        z_h: &Self::Act,
        w: &Self::Param,
        dw: &mut Self::F32,
        dbias: &mut Self::F32,
        dz_h: &mut Self::Act,
        seq: usize,
        d: usize,
    );

    // ACT bookkeeping (reference: `cpu::halting`; kernels/halting.cu).
    fn act_state(&self, batch: usize) -> Self::ActState;
    /// Sets the step counts and halting flags (evaluation keeps them on the host).
    fn act_set(&self, st: &mut Self::ActState, steps: &[u32], halted: &[bool]);
    /// Reads the per-row state back.
    fn act_rows(&self, st: &Self::ActState) -> ActRows;
    /// Reads `slot`'s q logits back as (q_halt, q_continue).
    fn act_q(&self, st: &Self::ActState, slot: QSlot) -> (Vec<f32>, Vec<f32>);
    /// Reads the step's per-row LM loss results back (no argmax).
    fn act_lm_rows(&self, st: &Self::ActState) -> LmLossOut;
    /// Sets the exploration minimums explicitly (validation against fixed draws).
    fn act_set_min_halt(&self, st: &mut Self::ActState, min_halt: &[u32]);
    /// Draws the exploration minimums from `key` (see `cpu::halting::explore_row`), row b as
    /// row `first_row + b` of the global batch.
    fn act_explore(&self, st: &mut Self::ActState, key: u64, prob: f64, max_steps: usize, first_row: usize);
    /// Halted rows take the new batch's tokens, puzzle id and labels and restart their count.
    fn act_take_new(
        &self,
        st: &mut Self::ActState,
        new_tokens: &Self::I32,
        tokens: &mut Self::I32,
        new_ids: &Self::I32,
        ids: &mut Self::I32,
        new_labels: &Self::I32,
        labels: &mut Self::I32,
        seq_len: usize,
    );
    /// `steps += 1` and the halting rule (see `cpu::halting::halt`).
    fn act_halt(&self, st: &mut Self::ActState, max_steps: usize);
    /// Sets the (1-based) number of the step about to run, read by the loss and the guard
    /// where the model runs (so a recorded graph of the step replays with the current number).
    fn act_set_step(&self, st: &mut Self::ActState, step: u32);
    /// Target-Q, Q losses, their gradients (`grad_scale` times d loss / d q) and the metrics.
    fn act_q_loss(&self, st: &mut Self::ActState, max_steps: usize, grad_scale: f64);
    /// Records the first non-finite gradient tensor of the current step in the guard status.
    fn act_guard(&self, st: &mut Self::ActState, grads: &[&Self::F32]);

    // TRM (`arch: trm`): the ops its model adds.
    /// The row length TRM's token mixing stores its rows of `seq` positions with (the pad
    /// columns hold 0). The CPU keeps them unpadded; the CUDA backend rounds up to a multiple of
    /// 8, which tensor-core GEMMs over that axis want (Sudoku: 97 -> 104).
    fn seq_row_len(&self, seq: usize) -> usize {
        seq
    }
    /// The batched transpose of [`TransposeDims`] (TRM's token mixing works on the sequence
    /// axis: [batch, seq, hidden] <-> [batch, hidden, seq_ld]).
    fn transpose(&self, x: &Self::Act, y: &mut Self::Act, t: &TransposeDims);
    /// `gate_up[cols, 2 inter] = xt[cols, :seq] w_in^T`.
    fn token_up_fwd(&self, xt: &Self::Act, w_in: &Self::Param, gate_up: &mut Self::Act, t: &TokenDims) {
        t.check_packed("token_up_fwd");
        self.linear_fwd(xt, w_in, gate_up, t.cols, t.seq, 2 * t.inter);
    }
    /// `proj[cols, :seq] = act[cols, inter] w_out^T`, the pad columns 0.
    fn token_down_fwd(&self, act: &Self::Act, w_out: &Self::Param, proj: &mut Self::Act, t: &TokenDims) {
        t.check_packed("token_down_fwd");
        self.linear_fwd(act, w_out, proj, t.cols, t.inter, t.seq);
    }
    /// Backward of [`Backend::token_down_fwd`]: `dact = ds[:, :seq] w_out`,
    /// `dw_out += ds[:, :seq]^T act`.
    #[allow(clippy::too_many_arguments)]
    fn token_down_bwd(
        &self,
        ds: &Self::Act,
        w_out: &Self::Param,
        act: &Self::Act,
        dact: &mut Self::Act,
        dw_out: &mut Self::F32,
        t: &TokenDims,
    ) {
        t.check_packed("token_down_bwd");
        self.linear_bwd_x(ds, w_out, dact, t.cols, t.inter, t.seq, false);
        self.linear_bwd_w(ds, act, dw_out, t.cols, t.inter, t.seq);
    }
    /// Backward of [`Backend::token_up_fwd`]: `dxt[:, :seq] += dgate_up w_in` (the pad
    /// columns stay as they are), `dw_in += dgate_up^T xt[:, :seq]`.
    #[allow(clippy::too_many_arguments)]
    fn token_up_bwd(
        &self,
        dgate_up: &Self::Act,
        w_in: &Self::Param,
        xt: &Self::Act,
        dxt: &mut Self::Act,
        dw_in: &mut Self::F32,
        t: &TokenDims,
    ) {
        t.check_packed("token_up_bwd");
        self.linear_bwd_x(dgate_up, w_in, dxt, t.cols, t.seq, 2 * t.inter, true);
        self.linear_bwd_w(dgate_up, xt, dw_in, t.cols, t.seq, 2 * t.inter);
    }
    /// The norm over the sequence: [`Backend::add_rms_norm_fwd`] on rows of `seq_ld` whose
    /// means count the `seq` real positions (the pads of x and r are 0, and so are y's).
    fn seq_norm_fwd(
        &self,
        x: &Self::Act,
        r: &Self::Act,
        y: &mut Self::Act,
        rstd: &mut Self::F32,
        t: &TokenDims,
        eps: f32,
    ) {
        t.check_packed("seq_norm_fwd");
        self.add_rms_norm_fwd(x, r, y, rstd, t.seq, eps);
    }
    /// Backward of [`Backend::seq_norm_fwd`] (zero pads of dy and y give zero pads of dx).
    fn seq_norm_bwd(
        &self,
        dy: &Self::Act,
        y: &Self::Act,
        rstd: &Self::F32,
        dx: &mut Self::Act,
        t: &TokenDims,
    ) {
        t.check_packed("seq_norm_bwd");
        self.rms_norm_bwd(dy, y, rstd, dx, t.seq);
    }
    /// TRM's training halting rule (`no_ACT_continue`): as [`Backend::act_halt`] with
    /// q_halt > 0 in place of q_halt > q_continue.
    fn act_halt_no_continue(&self, st: &mut Self::ActState, max_steps: usize);
    /// TRM's Q loss: as [`Backend::act_q_loss`] with the q_halt term only (no target, no
    /// q_continue loss; its gradient is 0).
    fn act_q_halt_loss(&self, st: &mut Self::ActState, grad_scale: f64);
    /// Reads (and zeroes) the accumulated metrics, with the guard status.
    fn act_report(&self, st: &mut Self::ActState) -> ActReport;
    /// Inference: scores the segment just run, nothing read back: the stablemax argmax and
    /// exact flag of every row into the state, and the exact flag also into the state's
    /// history [batch, max_segments] at column `steps[b]` (call before `act_halt` counts the
    /// segment).
    fn act_eval_score(
        &self,
        logits: &Self::Act,
        labels: &Self::I32,
        vocab: usize,
        seq: usize,
        st: &mut Self::ActState,
        max_segments: usize,
    );
    /// Reads what the inference segments left: the last scored argmax, the first `segments`
    /// columns of the exact history and the current q logits.
    fn act_eval_read(&self, st: &Self::ActState, seq: usize, segments: usize) -> EvalRows;

    // Transformer block pieces.
    fn add_rms_norm_fwd(
        &self,
        x: &Self::Act,
        r: &Self::Act,
        y: &mut Self::Act,
        rstd: &mut Self::F32,
        d: usize,
        eps: f32,
    );
    fn rms_norm_bwd(&self, dy: &Self::Act, y: &Self::Act, rstd: &Self::F32, dx: &mut Self::Act, d: usize);
    fn swiglu_fwd(&self, gate_up: &Self::Act, out: &mut Self::Act, inter: usize);
    fn swiglu_bwd(&self, dout: &Self::Act, gate_up: &Self::Act, dgate_up: &mut Self::Act, inter: usize);
    fn rope_fwd(
        &self,
        qkv: &mut Self::Act,
        cos: &Self::F32,
        sin: &Self::F32,
        seq: usize,
        heads: usize,
        head_dim: usize,
    );
    fn rope_bwd(
        &self,
        dqkv: &mut Self::Act,
        cos: &Self::F32,
        sin: &Self::F32,
        seq: usize,
        heads: usize,
        head_dim: usize,
    );
    fn attention_fwd(
        &self,
        qkv: &Self::Act,
        out: &mut Self::Act,
        lse: &mut Self::F32,
        batch: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
    );
    fn attention_bwd(
        &self,
        qkv: &Self::Act,
        out: &Self::Act,
        lse: &Self::F32,
        dout: &Self::Act,
        dqkv: &mut Self::Act,
        batch: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
    );

    // Fused RoPE + attention (additive). attention(rope(qkv)) with `qkv` BEFORE RoPE, left
    // unmodified; the backward takes the same un-rotated `qkv` and returns the gradient with
    // respect to it. The defaults compose the ops above (rope on a copy, attention, rope_bwd)
    // and stay the reference; a backend may override them with one fused pass.
    /// Whether [`Backend::attention_rope_fwd`] / `_bwd` run as one fused pass for this head
    /// size (the model then keeps q and k un-rotated); otherwise the model rotates in place and
    /// calls attention (the composed defaults would copy qkv each call).
    fn fuses_rope_attention(&self, _head_dim: usize) -> bool {
        false
    }
    fn attention_rope_fwd(
        &self,
        qkv: &Self::Act,
        cos: &Self::F32,
        sin: &Self::F32,
        out: &mut Self::Act,
        lse: &mut Self::F32,
        batch: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
    ) {
        attention_rope_fwd_composed(self, qkv, cos, sin, out, lse, batch, seq, heads, head_dim);
    }
    fn attention_rope_bwd(
        &self,
        qkv: &Self::Act,
        cos: &Self::F32,
        sin: &Self::F32,
        out: &Self::Act,
        lse: &Self::F32,
        dout: &Self::Act,
        dqkv: &mut Self::Act,
        batch: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
    ) {
        attention_rope_bwd_composed(self, qkv, cos, sin, out, lse, dout, dqkv, batch, seq, heads, head_dim);
    }

    // Embedding.
    fn embed_fwd(
        &self,
        tokens: &Self::I32,
        puzzle_ids: &Self::I32,
        embed_w: &Self::Param,
        puzzle_w: Option<&Self::Param>,
        pos_w: Option<&Self::Param>,
        out: &mut Self::Act,
        dims: &EmbedDims,
    );
    /// Accumulates (`+=`) the gradients of the token table, of the learned positions and, in
    /// `dpuzzle_rows` ([batch, puzzle_emb_ndim]), of each batch row's puzzle embedding row (the
    /// reference's `local_weights` gradient; [`Backend::puzzle_sign_sgd`] sums them per id), so
    /// no table-sized gradient exists.
    fn embed_bwd(
        &self,
        dx: &Self::Act,
        tokens: &Self::I32,
        dembed_w: &mut Self::F32,
        dpuzzle_rows: Option<&mut Self::F32>,
        dpos_w: Option<&mut Self::F32>,
        dims: &EmbedDims,
    );

    // Loss: stablemax CE + argmax + exact flags; dlogits = grad_scale * d(row loss)/d logits.
    fn lm_loss(
        &self,
        logits: &Self::Act,
        labels: &Self::I32,
        vocab: usize,
        seq: usize,
        grad_scale: f64,
        dlogits: Option<&mut Self::Act>,
    ) -> LmLossOut;

    /// The training loss: as [`Backend::lm_loss`] with the per-row results kept in `st`.
    fn lm_loss_rows(
        &self,
        logits: &Self::Act,
        labels: &Self::I32,
        vocab: usize,
        seq: usize,
        grad_scale: f64,
        dlogits: &mut Self::Act,
        st: &mut Self::ActState,
    );

    // Optimizers.
    fn adam_atan2_step(
        &self,
        p: &mut Self::Param,
        g: &Self::F32,
        m: &mut Self::F32,
        v: &mut Self::F32,
        step: u32,
        h: &AdamHyper,
    );
    /// The sparse SignSGD step of the puzzle embedding table `table` ([ids, row_len]), as the
    /// reference's `CastedSparseEmbeddingSignSGD_Distributed`: the gradient rows `row_grads`
    /// ([rows, row_len], one per batch row) are summed per puzzle id of `ids` (in row order),
    /// then each id present is updated once, `w = w * (1 - lr*wd) - lr * sign(sum)`; rows of
    /// ids not in the batch are left alone (no decay), and ids out of range are skipped. Nothing
    /// changes once the guard in `guard` recorded a bad step.
    fn puzzle_sign_sgd(
        &self,
        table: &mut Self::Param,
        row_grads: &Self::F32,
        ids: &Self::I32,
        row_len: usize,
        lr: f32,
        weight_decay: f32,
        guard: &Self::ActState,
    );
    /// One optimizer step over the dense tensors (AdamATan2, EMA and the bf16 shadows), skipped
    /// entirely once the guard in `guard` recorded a bad step. A device backend does it in one
    /// launch.
    fn optimizer_step(
        &self,
        params: &mut [&mut Self::Param],
        grads: &[&Self::F32],
        m: &mut [&mut Self::F32],
        v: &mut [&mut Self::F32],
        ema: Option<&mut [&mut Self::F32]>,
        rules: &[OptimRule],
        h: &OptimStep,
        guard: &Self::ActState,
    );

    // Data-parallel training (src/train/distributed.rs).
    /// Runs `op` over `bufs` across the ranks of `group`, in place, the same list of buffers on
    /// every rank. A backend without collectives supports world size 1 only.
    fn collective_f32(
        &self,
        group: &collective::ProcessGroup,
        op: collective::Collective,
        bufs: &mut [&mut Self::F32],
    ) -> Result<()> {
        let _ = (op, bufs);
        if group.world == 1 {
            return Ok(());
        }
        anyhow::bail!(
            "the {} backend has no collectives: data-parallel training (world size {}) runs on \
             the CUDA backend through NCCL (--device cuda, or emu for the CPU emulation)",
            self.name(),
            group.world
        )
    }
}

/// Where the model runs (`--device`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// A CUDA GPU when one is usable, else the CPU (never the emulation).
    #[default]
    Auto,
    /// The f32 CPU backend.
    Cpu,
    /// The CUDA backend on a GPU (an error without one).
    Cuda,
    /// The CUDA backend on the CPU emulation of the kernels: for testing the CUDA code path
    /// without a GPU; orders of magnitude slower than either real backend.
    Emu,
}

/// What a [`DeviceChoice`] resolved to on this machine.
pub enum Resolved {
    Cpu,
    Cuda(Box<cuda::Cuda>),
}

/// Opens the backend for `choice`: the CUDA device (or the emulation) is opened here, so a
/// missing GPU is reported before any work starts.
///
/// `auto` never fails because of the GPU: a GPU that is present but unusable (driver too old,
/// cuBLASLt missing, no memory to start) gives one warning with the reason and the CPU;
/// `cuda` fails with the same reason.
pub fn resolve(choice: DeviceChoice) -> Result<Resolved> {
    use cuda::{CudaDevice, DeviceKind};
    let open = || -> std::result::Result<Resolved, String> {
        let dev = CudaDevice::shared()?;
        Ok(Resolved::Cuda(Box::new(cuda::Cuda::new(dev))))
    };
    match choice {
        DeviceChoice::Cpu => Ok(Resolved::Cpu),
        DeviceChoice::Auto => {
            if !gpu_present(&cuda::device::select()) {
                return Ok(Resolved::Cpu);
            }
            match open() {
                Ok(r) => Ok(r),
                Err(why) => {
                    warn_gpu_unusable_once(&why);
                    Ok(Resolved::Cpu)
                }
            }
        }
        DeviceChoice::Cuda => match cuda::device::select() {
            kind if gpu_present(&kind) => {
                open().map_err(|why| anyhow::anyhow!("--device cuda: a GPU is present but unusable: {why}"))
            }
            Ok(_) => anyhow::bail!(
                "--device cuda: no usable GPU ({}); `--device cpu` runs on the CPU, `--device emu` \
                 runs the CUDA code path on the CPU emulation for testing",
                cuda::device::emulation_reason().unwrap_or_default()
            ),
            Err(why) => anyhow::bail!("--device cuda: {why}"),
        },
        DeviceChoice::Emu => {
            if !cuda::device::request_emulation() {
                anyhow::bail!("--device emu: a real GPU was already opened in this process");
            }
            match cuda::device::select() {
                Ok(DeviceKind::Emulation) => {
                    open().map_err(|e| anyhow::anyhow!("cannot open the CUDA device: {e}"))
                }
                Ok(DeviceKind::Gpu) => anyhow::bail!("--device emu: HRM_REQUIRE_GPU=1 forbids the emulation"),
                Err(why) => anyhow::bail!("--device emu: {why}"),
            }
        }
    }
}

/// A GPU is there (usable or not), or (test only, `HRM_TEST_EMU_AS_GPU=1`) the emulation
/// stands in for one.
fn gpu_present(kind: &std::result::Result<cuda::DeviceKind, String>) -> bool {
    match kind {
        Ok(cuda::DeviceKind::Gpu) => true,
        Ok(cuda::DeviceKind::Emulation) => cuda::device::emulation_counts_as_gpu(),
        Err(_) => false,
    }
}

/// The one warning of `--device auto` falling back to the CPU (a process may resolve its
/// device more than once; the reason does not change).
fn warn_gpu_unusable_once(why: &str) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        eprintln!(
            "WARNING: a GPU is present but unusable, so --device auto runs on the CPU (far slower): \
             {why}\n         (`hrm doctor` shows what this machine offers; --device cuda makes this an error)"
        )
    });
}

/// What `--device auto` picks on this machine and why, without opening anything beyond what
/// `auto` itself opens (for `hrm doctor`): ("cuda" or "cpu", the reason).
pub fn auto_choice() -> (&'static str, String) {
    use cuda::CudaDevice;
    let kind = cuda::device::select();
    if !gpu_present(&kind) {
        let why = match kind {
            Ok(_) => cuda::device::emulation_reason().unwrap_or_default().to_string(),
            Err(why) => why,
        };
        return ("cpu", format!("no GPU: {why}"));
    }
    match CudaDevice::shared() {
        Ok(dev) => ("cuda", format!("GPU {} opens, kernels ({:?}) and cuBLASLt load", dev.name, dev.form)),
        Err(why) => ("cpu", format!("a GPU is present but unusable: {why}")),
    }
}

/// Runs `$body` with `$be` bound to the backend `$choice` resolves to; the body is compiled
/// once per backend type, so it may call any generic code over `Backend`.
#[macro_export]
macro_rules! with_backend {
    ($choice:expr, |$be:ident| $body:expr) => {{
        match $crate::backend::resolve($choice)? {
            $crate::backend::Resolved::Cpu => {
                let $be = &$crate::backend::cpu::Cpu;
                $body
            }
            $crate::backend::Resolved::Cuda(cuda_backend) => {
                let $be = &*cuda_backend;
                $body
            }
        }
    }};
}

/// The composed [`Backend::attention_rope_fwd`]: RoPE on a copy of `qkv`, then attention.
#[allow(clippy::too_many_arguments)]
pub fn attention_rope_fwd_composed<B: Backend + ?Sized>(
    be: &B,
    qkv: &B::Act,
    cos: &B::F32,
    sin: &B::F32,
    out: &mut B::Act,
    lse: &mut B::F32,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) {
    let mut roped = be.zeros(be.act_len(qkv));
    be.copy(qkv, &mut roped);
    be.rope_fwd(&mut roped, cos, sin, seq, heads, head_dim);
    be.attention_fwd(&roped, out, lse, batch, seq, heads, head_dim);
}

/// The composed [`Backend::attention_rope_bwd`]: attention backward on the rotated copy of
/// `qkv`, then RoPE backward on dq and dk.
#[allow(clippy::too_many_arguments)]
pub fn attention_rope_bwd_composed<B: Backend + ?Sized>(
    be: &B,
    qkv: &B::Act,
    cos: &B::F32,
    sin: &B::F32,
    out: &B::Act,
    lse: &B::F32,
    dout: &B::Act,
    dqkv: &mut B::Act,
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
) {
    let mut roped = be.zeros(be.act_len(qkv));
    be.copy(qkv, &mut roped);
    be.rope_fwd(&mut roped, cos, sin, seq, heads, head_dim);
    be.attention_bwd(&roped, out, lse, dout, dqkv, batch, seq, heads, head_dim);
    be.rope_bwd(dqkv, cos, sin, seq, heads, head_dim);
}
