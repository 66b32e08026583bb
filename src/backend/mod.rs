//! Compute backends. The model math (`crate::hrm`) is written once over the `Backend` trait;
//! a backend implements each op with its forward and backward side by side. `cpu` is the f32
//! reference every other backend is validated against.

pub mod cpu;
pub mod cuda;

pub use cpu::embed::EmbedDims;
pub use cpu::loss::LmLossOut;
pub use cpu::optim::AdamHyper;

/// The ops the HRM needs, forward and backward paired. Shapes: activations are row-major
/// `[rows, width]` with rows = batch * sequence; `w` is a PyTorch `[out, in]` weight.
#[allow(clippy::too_many_arguments)]
pub trait Backend {
    /// A float buffer (f32 on the CPU).
    type Buf: Send + Sync;
    /// An i32 buffer (token ids, labels, puzzle ids).
    type IBuf: Send + Sync;

    fn name(&self) -> &'static str;

    // Memory.
    fn zeros(&self, n: usize) -> Self::Buf;
    fn upload(&self, host: &[f32]) -> Self::Buf;
    fn download(&self, buf: &Self::Buf) -> Vec<f32>;
    fn upload_i32(&self, host: &[i32]) -> Self::IBuf;
    fn len(&self, buf: &Self::Buf) -> usize;
    fn copy(&self, src: &Self::Buf, dst: &mut Self::Buf);
    fn fill_zero(&self, buf: &mut Self::Buf);
    /// No NaN or infinity in the buffer (the training NaN guard).
    fn all_finite(&self, buf: &Self::Buf) -> bool;
    /// `ema = decay * ema + (1 - decay) * p`
    fn ema_update(&self, ema: &mut Self::Buf, p: &Self::Buf, decay: f32);

    // Elementwise.
    /// `out = a + b`
    fn add(&self, a: &Self::Buf, b: &Self::Buf, out: &mut Self::Buf);
    /// `a += b`
    fn add_inplace(&self, a: &mut Self::Buf, b: &Self::Buf);
    /// Rows `b` with `mask[b]` of `z` [batch, seq, width] become `init` [width] at every position.
    fn reset_rows(&self, z: &mut Self::Buf, init: &Self::Buf, mask: &[bool], width: usize);
    /// `dst[b, j] = src[b, start + j]` for j < n, rows of `width`; `src` is [batch, seq, width].
    fn gather_positions(
        &self,
        src: &Self::Buf,
        dst: &mut Self::Buf,
        seq: usize,
        start: usize,
        n: usize,
        width: usize,
    );
    /// The transpose of `gather_positions`, accumulating into `dsrc`.
    fn scatter_add_positions(
        &self,
        ddst: &Self::Buf,
        dsrc: &mut Self::Buf,
        seq: usize,
        start: usize,
        n: usize,
        width: usize,
    );

    // Linear (GEMM).
    fn linear_fwd(
        &self,
        x: &Self::Buf,
        w: &Self::Buf,
        y: &mut Self::Buf,
        rows: usize,
        din: usize,
        dout: usize,
    );
    fn linear_bwd_x(
        &self,
        dy: &Self::Buf,
        w: &Self::Buf,
        dx: &mut Self::Buf,
        rows: usize,
        din: usize,
        dout: usize,
        accumulate: bool,
    );
    fn linear_bwd_w(
        &self,
        dy: &Self::Buf,
        x: &Self::Buf,
        dw: &mut Self::Buf,
        rows: usize,
        din: usize,
        dout: usize,
    );

    // Transformer block pieces.
    fn add_rms_norm_fwd(
        &self,
        x: &Self::Buf,
        r: &Self::Buf,
        y: &mut Self::Buf,
        rstd: &mut Self::Buf,
        d: usize,
        eps: f32,
    );
    fn rms_norm_bwd(&self, dy: &Self::Buf, y: &Self::Buf, rstd: &Self::Buf, dx: &mut Self::Buf, d: usize);
    fn swiglu_fwd(&self, gate_up: &Self::Buf, out: &mut Self::Buf, inter: usize);
    fn swiglu_bwd(&self, dout: &Self::Buf, gate_up: &Self::Buf, dgate_up: &mut Self::Buf, inter: usize);
    fn rope_fwd(
        &self,
        qkv: &mut Self::Buf,
        cos: &Self::Buf,
        sin: &Self::Buf,
        seq: usize,
        heads: usize,
        head_dim: usize,
    );
    fn rope_bwd(
        &self,
        dqkv: &mut Self::Buf,
        cos: &Self::Buf,
        sin: &Self::Buf,
        seq: usize,
        heads: usize,
        head_dim: usize,
    );
    fn attention_fwd(
        &self,
        qkv: &Self::Buf,
        out: &mut Self::Buf,
        lse: &mut Self::Buf,
        batch: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
    );
    fn attention_bwd(
        &self,
        qkv: &Self::Buf,
        out: &Self::Buf,
        lse: &Self::Buf,
        dout: &Self::Buf,
        dqkv: &mut Self::Buf,
        batch: usize,
        seq: usize,
        heads: usize,
        head_dim: usize,
    );

    // Embedding.
    fn embed_fwd(
        &self,
        tokens: &Self::IBuf,
        puzzle_ids: &Self::IBuf,
        embed_w: &Self::Buf,
        puzzle_w: Option<&Self::Buf>,
        pos_w: Option<&Self::Buf>,
        out: &mut Self::Buf,
        dims: &EmbedDims,
    );
    fn embed_bwd(
        &self,
        dx: &Self::Buf,
        tokens: &Self::IBuf,
        puzzle_ids: &Self::IBuf,
        dembed_w: &mut Self::Buf,
        dpuzzle_w: Option<&mut Self::Buf>,
        dpos_w: Option<&mut Self::Buf>,
        dims: &EmbedDims,
    );

    // Loss: stablemax CE + argmax + exact flags; dlogits = grad_scale * d(row loss)/d logits.
    fn lm_loss(
        &self,
        logits: &Self::Buf,
        labels: &Self::IBuf,
        vocab: usize,
        seq: usize,
        grad_scale: f64,
        dlogits: Option<&mut Self::Buf>,
    ) -> LmLossOut;

    // Optimizers.
    fn adam_atan2_step(
        &self,
        p: &mut Self::Buf,
        g: &Self::Buf,
        m: &mut Self::Buf,
        v: &mut Self::Buf,
        step: u32,
        h: &AdamHyper,
    );
    fn sign_sgd_step(
        &self,
        w: &mut Self::Buf,
        g: &Self::Buf,
        touched: &[bool],
        row_len: usize,
        lr: f32,
        weight_decay: f32,
    );
}
