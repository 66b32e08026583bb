//! The HRM math, written once over a `Backend`: the post-norm transformer block, the H and L
//! reasoning modules, one ACT segment with the one-step gradient approximation, the output
//! heads, and the backward of the gradient-carrying updates.
//!
//! One segment (H_cycles = L_cycles = 2): no-grad updates L, L, H, L; then with gradient
//! `z_L = L(z_L, z_H + x)` and `z_H = H(z_H, z_L)`; logits = lm_head(z_H) without the prefix
//! positions; (q_halt, q_continue) = q_head(z_H[:, 0]).
//!
//! TRM (`arch: trm`) is the same schedule of the same two updates with one network (the L
//! module's blocks) for both, and a different gradient: T = H_cycles recursions of n = L_cycles
//! z-updates and one y-update, the first T-1 without gradient and the whole last one (n + 1
//! network calls) with it. Its blocks may mix tokens with a SwiGLU across the sequence
//! (`mlp_t`, normalized over the sequence) in place of attention.

use crate::backend::{Backend, EmbedDims, QSlot, TokenDims, TransposeDims};
use crate::config::{ModelConfig, PosEncodings};
use crate::model::memory::SavedActivations;
use crate::model::{HostParams, LayerParams, ParamSet, TensorKind};

/// Batch shapes the workspaces are sized for.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub batch: usize,
    /// prefix + cells
    pub seq: usize,
    pub hidden: usize,
    pub heads: usize,
    pub head_dim: usize,
    pub inter: usize,
    /// TRM's token-mixing SwiGLU instead of attention, and its width.
    pub mlp_t: bool,
    pub tok_inter: usize,
    /// The row length of its transposed rows of `seq` positions (`Backend::seq_row_len`).
    pub seq_ld: usize,
}

impl Shape {
    pub fn new<B: Backend>(be: &B, cfg: &ModelConfig, batch: usize) -> Self {
        let seq = cfg.total_seq_len();
        Shape {
            batch,
            seq,
            hidden: cfg.hidden_size,
            heads: cfg.num_heads,
            head_dim: cfg.head_dim(),
            inter: cfg.intermediate_size(),
            mlp_t: cfg.uses_mlp_t(),
            tok_inter: cfg.token_intermediate_size(),
            seq_ld: be.seq_row_len(seq),
        }
    }
    pub fn rows(&self) -> usize {
        self.batch * self.seq
    }
    /// [batch, seq, hidden] -> [batch, hidden, seq_ld] (pads written 0).
    fn seq_to_channels(&self) -> TransposeDims {
        let (batch, rows, cols) = (self.batch, self.seq, self.hidden);
        TransposeDims { batch, rows, cols, x_ld: cols, y_ld: self.seq_ld }
    }
    /// [batch, hidden, seq_ld] -> [batch, seq, hidden] (pads not read).
    fn channels_to_seq(&self) -> TransposeDims {
        let (batch, rows, cols) = (self.batch, self.hidden, self.seq);
        TransposeDims { batch, rows, cols, x_ld: self.seq_ld, y_ld: rows }
    }
    /// The token mixing's shapes (TRM's `mlp_t`).
    fn tok(&self) -> TokenDims {
        TokenDims {
            cols: self.batch * self.hidden,
            seq: self.seq,
            seq_ld: self.seq_ld,
            inter: self.tok_inter,
        }
    }
}

/// What one block keeps for its backward (also used as scratch for no-grad blocks).
pub struct LayerActs<B: Backend> {
    /// q, k and v [rows, 3*hidden] (q and k rotated by RoPE, unless the backend fuses RoPE into
    /// attention)
    qkv: B::Act,
    /// attention output before o_proj [rows, hidden]
    attn: B::Act,
    lse: B::F32,
    /// o_proj or down_proj output (transient)
    proj: B::Act,
    /// after the first residual + norm
    h1: B::Act,
    rstd1: B::F32,
    gate_up: B::Act,
    act: B::Act,
    /// block output
    out: B::Act,
    rstd2: B::F32,
    /// The token-mixing SwiGLU's tensors (TRM's `mlp_t`; then qkv, attn and lse are empty).
    tok: Option<TokenActs<B>>,
}

/// What TRM's token-mixing SwiGLU keeps, in the transposed layout [batch * hidden, seq_ld].
struct TokenActs<B: Backend> {
    /// the block input, transposed
    xt: B::Act,
    gate_up: B::Act,
    act: B::Act,
    proj: B::Act,
    /// after the residual and the norm over the sequence, transposed
    h1t: B::Act,
    rstd: B::F32,
}

impl<B: Backend> TokenActs<B> {
    fn new(be: &B, s: &Shape) -> Self {
        let cols = s.batch * s.hidden;
        TokenActs {
            xt: be.zeros(cols * s.seq_ld),
            gate_up: be.zeros(cols * 2 * s.tok_inter),
            act: be.zeros(cols * s.tok_inter),
            proj: be.zeros(cols * s.seq_ld),
            h1t: be.zeros(cols * s.seq_ld),
            rstd: be.zeros_f32(cols),
        }
    }
}

impl<B: Backend> LayerActs<B> {
    fn new(be: &B, s: &Shape) -> Self {
        let (r, d) = (s.rows(), s.hidden);
        let attn = !s.mlp_t as usize;
        LayerActs {
            qkv: be.zeros(attn * r * 3 * d),
            attn: be.zeros(attn * r * d),
            lse: be.zeros_f32(attn * s.batch * s.heads * s.seq),
            proj: be.zeros(r * d),
            h1: be.zeros(r * d),
            rstd1: be.zeros_f32(r),
            gate_up: be.zeros(r * 2 * s.inter),
            act: be.zeros(r * s.inter),
            out: be.zeros(r * d),
            rstd2: be.zeros_f32(r),
            tok: s.mlp_t.then(|| TokenActs::new(be, s)),
        }
    }
}

/// Activations of the gradient-carrying module application: its input (z + injection) and
/// each block's saved tensors.
pub struct ModuleActs<B: Backend> {
    input: B::Act,
    layers: Vec<LayerActs<B>>,
}

impl<B: Backend> ModuleActs<B> {
    fn new(be: &B, s: &Shape, layers: usize) -> Self {
        ModuleActs {
            input: be.zeros(s.rows() * s.hidden),
            layers: (0..layers).map(|_| LayerActs::new(be, s)).collect(),
        }
    }
}

/// Gradient buffers reused across blocks.
struct GradScratch<B: Backend> {
    ds2: B::Act,
    dact: B::Act,
    dgate_up: B::Act,
    dh1: B::Act,
    ds1: B::Act,
    dattn: B::Act,
    dqkv: B::Act,
    /// d(block output) on entry to a block's backward, d(block input) on return
    dnext: B::Act,
    /// TRM's token-mixing SwiGLU, transposed layout (then dattn and dqkv are empty)
    tok: Option<TokenGrads<B>>,
}

/// Gradient buffers of the token-mixing SwiGLU, [batch * hidden, seq_ld] and its widths.
struct TokenGrads<B: Backend> {
    dh1t: B::Act,
    ds1t: B::Act,
    dact: B::Act,
    dgate_up: B::Act,
    dxt: B::Act,
}

/// What only a training step needs: the saved activations of the gradient-carrying L and H
/// updates (HRM: the last of each; TRM: the n z-updates and the y-update of the last
/// recursion), the backward's scratch, and the target-Q segment's copy of the carry.
struct TrainBuffers<B: Backend> {
    /// the gradient-carrying z-updates' activations: one per update when kept, one shared by
    /// all when recomputed ([`SavedActivations`])
    l: Vec<ModuleActs<B>>,
    /// [`SavedActivations::Recompute`]: the inputs of the z-updates but the last (whose
    /// activations are still in `l[0]` when the backward starts); empty when kept
    inputs: Vec<B::Act>,
    h: ModuleActs<B>,
    /// TRM with n > 1: the gradient of x summed over the n z-updates
    dx: Option<B::Act>,
    g: GradScratch<B>,
    dlogits: B::Act,
    dcells: B::Act,
    /// (z_H, z_L) of the target-Q segment (`None` only while that segment runs)
    target: Option<(B::Act, B::Act)>,
}

impl<B: Backend> TrainBuffers<B> {
    /// The gradient-carrying z-updates (TRM: n, HRM: 1), kept or recomputed.
    fn z_updates(&self) -> usize {
        self.l.len().max(self.inputs.len() + 1)
    }
    /// Where z-update `k` keeps its activations: its own, or the one buffer all share when they
    /// are recomputed.
    fn slot(&self, k: usize) -> usize {
        if self.l.len() == 1 { 0 } else { k }
    }
}

/// What a module application adds to its state before the layers: the H module adds z_L; the
/// L module adds the input injection z_H + x (one fused op, `Backend::add_injection`).
enum Injection<'a, B: Backend> {
    Of(&'a B::Act),
    HPlusX(&'a B::Act, &'a B::Act),
}

/// Every buffer a segment (and a training step's backward) uses, allocated once per batch
/// shape: nothing is allocated inside a step. The no-grad updates ping-pong between the carry
/// and `scratch.out` instead of copying the state after each block.
pub struct Workspace<B: Backend> {
    /// unique in the process (recorded graphs are keyed by it, see [`Workspace::uid`])
    uid: u64,
    /// an inference segment ran here directly, making its buffers (see `act::infer_segments`)
    pub infer_warm: bool,
    shape: Shape,
    /// the batch's tokens and puzzle ids on the backend
    pub inputs: DeviceInputs<B>,
    /// the batch's labels [batch, seq_len]
    pub labels: B::I32,
    /// the ACT state of the batch (step counts, halting, q logits, losses, metrics, guard)
    pub act: B::ActState,
    /// a new training batch, uploaded before the halted rows take it
    pub new: NewBatch<B>,
    /// the input embedding of the current batch [rows, hidden]
    x: B::Act,
    scratch: LayerActs<B>,
    /// z_H at the cell positions [batch * seq_len, hidden]
    cells: B::Act,
    /// [batch * seq_len, vocab] (prefix positions dropped)
    logits: B::Act,
    train: Option<TrainBuffers<B>>,
}

impl<B: Backend> Workspace<B> {
    /// Buffers for inference at this batch size; the training buffers come with the first
    /// training segment.
    pub fn new(be: &B, cfg: &ModelConfig, batch: usize) -> Self {
        let s = Shape::new(be, cfg, batch);
        let (r, d) = (s.rows(), s.hidden);
        static NEXT_UID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Workspace {
            uid: NEXT_UID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            infer_warm: false,
            shape: s,
            inputs: DeviceInputs {
                tokens: be.upload_i32(&vec![0; batch * cfg.seq_len]),
                puzzle_ids: be.upload_i32(&vec![0; batch]),
            },
            labels: be.upload_i32(&vec![0; batch * cfg.seq_len]),
            act: be.act_state(batch),
            new: NewBatch {
                tokens: be.upload_i32(&vec![0; batch * cfg.seq_len]),
                puzzle_ids: be.upload_i32(&vec![0; batch]),
                labels: be.upload_i32(&vec![0; batch * cfg.seq_len]),
            },
            x: be.zeros(r * d),
            scratch: LayerActs::new(be, &s),
            cells: be.zeros(batch * cfg.seq_len * d),
            logits: be.zeros(batch * cfg.seq_len * cfg.vocab_size),
            train: None,
        }
    }

    fn ensure_train(&mut self, be: &B, cfg: &ModelConfig, saved: SavedActivations) {
        if self.train.is_some() {
            return;
        }
        let s = self.shape;
        let (r, d) = (s.rows(), s.hidden);
        let n = s.batch * cfg.seq_len;
        let (h_layers, l_layers) = crate::model::params::module_layers(cfg);
        let (grad_l_calls, h_layers) = if cfg.is_trm() { (cfg.L_cycles, l_layers) } else { (1, h_layers) };
        let recompute = saved == SavedActivations::Recompute;
        let (kept, inputs) = if recompute { (1, grad_l_calls - 1) } else { (grad_l_calls, 0) };
        let attn = !s.mlp_t as usize;
        let cols = s.batch * s.hidden;
        self.train = Some(TrainBuffers {
            l: (0..kept).map(|_| ModuleActs::new(be, &s, l_layers)).collect(),
            inputs: (0..inputs).map(|_| be.zeros(r * d)).collect(),
            h: ModuleActs::new(be, &s, h_layers),
            dx: (grad_l_calls > 1).then(|| be.zeros(r * d)),
            g: GradScratch {
                ds2: be.zeros(r * d),
                dact: be.zeros(r * s.inter),
                dgate_up: be.zeros(r * 2 * s.inter),
                dh1: be.zeros(r * d),
                ds1: be.zeros(r * d),
                dattn: be.zeros(attn * r * d),
                dqkv: be.zeros(attn * r * 3 * d),
                dnext: be.zeros(r * d),
                tok: s.mlp_t.then(|| TokenGrads {
                    dh1t: be.zeros(cols * s.seq_ld),
                    ds1t: be.zeros(cols * s.seq_ld),
                    dact: be.zeros(cols * s.tok_inter),
                    dgate_up: be.zeros(cols * 2 * s.tok_inter),
                    dxt: be.zeros(cols * s.seq_ld),
                }),
            },
            dlogits: be.zeros(n * cfg.vocab_size),
            dcells: be.zeros(n * d),
            target: Some((be.zeros(r * d), be.zeros(r * d))),
        });
    }

    pub fn batch(&self) -> usize {
        self.shape.batch
    }
    /// This workspace's identity, unique in the process: the first element of the key of every
    /// graph recorded on its buffers (a new workspace may reuse a dropped one's addresses), so
    /// `Backend::forget_graphs(uid)` drops them with it.
    pub fn uid(&self) -> u64 {
        self.uid
    }
    /// Logits, labels and the ACT state, for scoring an inference segment.
    pub fn score_views(&mut self) -> (&B::Act, &B::I32, &mut B::ActState) {
        (&self.logits, &self.labels, &mut self.act)
    }
    /// The last segment's logits [batch * seq_len, vocab].
    pub fn logits(&self) -> &B::Act {
        &self.logits
    }
    /// Logits, labels, the logits' gradient buffer and the ACT state for the training loss
    /// (`None` before a training segment).
    pub fn loss_views(&mut self) -> Option<LossViews<'_, B>> {
        let t = self.train.as_mut()?;
        Some(LossViews {
            logits: &self.logits,
            labels: &self.labels,
            dlogits: &mut t.dlogits,
            act: &mut self.act,
        })
    }
    /// Identities of the buffers the no-grad updates and the target segment trade places with.
    pub fn swap_ids(&self, be: &B) -> Vec<u64> {
        let mut ids = vec![be.act_id(&self.scratch.out)];
        if let Some((a, b)) = self.train.as_ref().and_then(|t| t.target.as_ref()) {
            ids.extend([be.act_id(a), be.act_id(b)]);
        }
        ids
    }
    /// The last segment's q logits, read back to the host.
    pub fn heads(&self, be: &B) -> Heads {
        let (q_halt, q_continue) = be.act_q(&self.act, QSlot::Current);
        Heads { q_halt, q_continue }
    }
}

/// What the training loss reads and writes (see [`Workspace::loss_views`]).
pub struct LossViews<'a, B: Backend> {
    pub logits: &'a B::Act,
    pub labels: &'a B::I32,
    pub dlogits: &'a mut B::Act,
    pub act: &'a mut B::ActState,
}

/// A training batch on the backend before the halted rows take it.
pub struct NewBatch<B: Backend> {
    pub tokens: B::I32,
    pub puzzle_ids: B::I32,
    pub labels: B::I32,
}

/// The q logits of a segment on the host (the logits stay in the workspace:
/// [`Workspace::logits`]).
pub struct Heads {
    /// q_halt logits [batch]
    pub q_halt: Vec<f32>,
    /// q_continue logits [batch]
    pub q_continue: Vec<f32>,
}

/// Token inputs of a batch, on the backend.
pub struct DeviceInputs<B: Backend> {
    pub tokens: B::I32,
    pub puzzle_ids: B::I32,
}

/// The model: config, parameters on the backend, RoPE tables.
pub struct Hrm<B: Backend> {
    pub cfg: ModelConfig,
    pub params: ParamSet<B::Param>,
    /// RoPE on q and k (pos_encodings == rope); learned positions are added to the input instead.
    rope: bool,
    cos: B::F32,
    sin: B::F32,
    /// Where the weights came from (a checkpoint path), named by errors about the model's
    /// outputs.
    origin: Option<String>,
    /// What a training step keeps of TRM's gradient-carrying recursion (set before the first
    /// training segment: a workspace's buffers follow it when they are made).
    pub saved: SavedActivations,
}

impl<B: Backend> Hrm<B> {
    pub fn new(be: &B, cfg: &ModelConfig, host: &HostParams) -> Self {
        let params = host.map(cfg, |s, t| match s.kind {
            TensorKind::SparseEmbedding => be.upload_table(t),
            _ => be.upload_param(t),
        });
        let (cos, sin) = crate::backend::cpu::rope::rope_tables(
            cfg.total_seq_len(),
            cfg.head_dim(),
            cfg.rope_theta as f32,
        );
        let rope = cfg.pos_encodings == PosEncodings::Rope;
        Hrm {
            cfg: cfg.clone(),
            params,
            rope,
            cos: be.upload_f32(&cos),
            sin: be.upload_f32(&sin),
            origin: None,
            saved: SavedActivations::Keep,
        }
    }

    /// The model with the file its weights were read from, for errors about its outputs.
    pub fn with_origin(mut self, path: &std::path::Path) -> Self {
        self.origin = Some(path.display().to_string());
        self
    }

    /// The file the weights were read from, if any.
    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    pub fn to_host(&self, be: &B) -> HostParams {
        self.params.map(&self.cfg, |_, t| be.download_param(t))
    }

    /// Zero gradients of a training step over `rows` batch rows: one per dense tensor, and
    /// [rows, puzzle_emb_ndim] for the puzzle embedding (one gradient row per batch row; the
    /// table itself never gets a gradient of its size).
    pub fn zero_grads(&self, be: &B, rows: usize) -> ParamSet<B::F32> {
        self.params.map(&self.cfg, |s, _| match s.kind {
            TensorKind::SparseEmbedding => be.zeros_f32(rows * s.shape[1]),
            _ => be.zeros_f32(s.numel()),
        })
    }

    fn embed_dims(&self, batch: usize) -> EmbedDims {
        EmbedDims {
            batch,
            seq_len: self.cfg.seq_len,
            prefix_len: self.cfg.puzzle_emb_len(),
            hidden: self.cfg.hidden_size,
            puzzle_emb_ndim: self.cfg.puzzle_emb_ndim,
            scale: self.cfg.embed_scale(),
        }
    }

    /// `x = sqrt(hidden) * [puzzle prefix; embed_tokens[tokens]]` [batch*seq, hidden] into the
    /// workspace (the input of the next segments).
    pub fn embed(&self, be: &B, ws: &mut Workspace<B>) {
        let p = &self.params;
        be.embed_fwd(
            &ws.inputs.tokens,
            &ws.inputs.puzzle_ids,
            &p.embed_tokens,
            p.puzzle_emb.as_ref(),
            p.embed_pos.as_ref(),
            &mut ws.x,
            &self.embed_dims(ws.shape.batch),
        );
    }

    /// Carry rows (z_H or z_L) set to `init` where halted in `st`.
    pub fn reset(&self, be: &B, z: &mut B::Act, init_h: bool, st: &B::ActState) {
        let init = if init_h { &self.params.h_init } else { &self.params.l_init };
        be.reset_rows(z, init, st, self.cfg.hidden_size);
    }

    /// One transformer block: input `a.h0` given separately; results in `a`.
    fn block_fwd(&self, be: &B, s: &Shape, w: &LayerParams<B::Param>, input: &B::Act, a: &mut LayerActs<B>) {
        let (r, d, eps) = (s.rows(), s.hidden, self.cfg.rms_norm_eps as f32);
        if let Some(t) = a.tok.as_mut() {
            // TRM's token mixing: per (row, channel) the SwiGLU across the sequence, then the
            // residual and the norm over the sequence, in the transposed layout (rows of seq_ld,
            // the pads 0 throughout).
            let tk = s.tok();
            be.transpose(input, &mut t.xt, &s.seq_to_channels());
            be.token_up_fwd(&t.xt, &w.qkv, &mut t.gate_up, &tk);
            be.swiglu_fwd(&t.gate_up, &mut t.act, tk.inter);
            be.token_down_fwd(&t.act, &w.o, &mut t.proj, &tk);
            be.seq_norm_fwd(&t.xt, &t.proj, &mut t.h1t, &mut t.rstd, &tk, eps);
            be.transpose(&t.h1t, &mut a.h1, &s.channels_to_seq());
            self.channel_mlp_fwd(be, s, w, a);
            return;
        }
        be.linear_fwd(input, &w.qkv, &mut a.qkv, r, d, 3 * d);
        if self.rope && be.fuses_rope_attention(s.head_dim) {
            // q and k rotated inside attention; `qkv` stays un-rotated
            let (c, sn) = (&self.cos, &self.sin);
            be.attention_rope_fwd(
                &a.qkv,
                c,
                sn,
                &mut a.attn,
                &mut a.lse,
                s.batch,
                s.seq,
                s.heads,
                s.head_dim,
            );
        } else {
            if self.rope {
                be.rope_fwd(&mut a.qkv, &self.cos, &self.sin, s.seq, s.heads, s.head_dim);
            }
            be.attention_fwd(&a.qkv, &mut a.attn, &mut a.lse, s.batch, s.seq, s.heads, s.head_dim);
        }
        be.linear_fwd(&a.attn, &w.o, &mut a.proj, r, d, d);
        be.add_rms_norm_fwd(input, &a.proj, &mut a.h1, &mut a.rstd1, d, eps);
        self.channel_mlp_fwd(be, s, w, a);
    }

    /// The block's second half: `out = rms_norm(h1 + down(swiglu(gate_up(h1))))`.
    fn channel_mlp_fwd(&self, be: &B, s: &Shape, w: &LayerParams<B::Param>, a: &mut LayerActs<B>) {
        let (r, d, eps) = (s.rows(), s.hidden, self.cfg.rms_norm_eps as f32);
        be.linear_fwd(&a.h1, &w.gate_up, &mut a.gate_up, r, d, 2 * s.inter);
        be.swiglu_fwd(&a.gate_up, &mut a.act, s.inter);
        be.linear_fwd(&a.act, &w.down, &mut a.proj, r, s.inter, d);
        be.add_rms_norm_fwd(&a.h1, &a.proj, &mut a.out, &mut a.rstd2, d, eps);
    }

    /// Backward of one block: `g.dnext` holds d(out) on entry and d(input) on return;
    /// weight gradients accumulate into `gw`.
    #[allow(clippy::too_many_arguments)]
    fn block_bwd(
        &self,
        be: &B,
        s: &Shape,
        w: &LayerParams<B::Param>,
        input: &B::Act,
        a: &LayerActs<B>,
        g: &mut GradScratch<B>,
        gw: &mut LayerParams<B::F32>,
    ) {
        let (r, d) = (s.rows(), s.hidden);
        be.rms_norm_bwd(&g.dnext, &a.out, &a.rstd2, &mut g.ds2, d);
        be.linear_bwd_x(&g.ds2, &w.down, &mut g.dact, r, s.inter, d, false);
        be.linear_bwd_w(&g.ds2, &a.act, &mut gw.down, r, s.inter, d);
        be.swiglu_bwd(&g.dact, &a.gate_up, &mut g.dgate_up, s.inter);
        be.copy(&g.ds2, &mut g.dh1);
        be.linear_bwd_x(&g.dgate_up, &w.gate_up, &mut g.dh1, r, d, 2 * s.inter, true);
        be.linear_bwd_w(&g.dgate_up, &a.h1, &mut gw.gate_up, r, d, 2 * s.inter);
        if let (Some(t), Some(tg)) = (a.tok.as_ref(), g.tok.as_mut()) {
            // TRM's token mixing, backwards in the transposed layout.
            let tk = s.tok();
            be.transpose(&g.dh1, &mut tg.dh1t, &s.seq_to_channels());
            be.seq_norm_bwd(&tg.dh1t, &t.h1t, &t.rstd, &mut tg.ds1t, &tk);
            be.token_down_bwd(&tg.ds1t, &w.o, &t.act, &mut tg.dact, &mut gw.o, &tk);
            be.swiglu_bwd(&tg.dact, &t.gate_up, &mut tg.dgate_up, tk.inter);
            be.copy(&tg.ds1t, &mut tg.dxt);
            be.token_up_bwd(&tg.dgate_up, &w.qkv, &t.xt, &mut tg.dxt, &mut gw.qkv, &tk);
            be.transpose(&tg.dxt, &mut g.dnext, &s.channels_to_seq());
            return;
        }
        be.rms_norm_bwd(&g.dh1, &a.h1, &a.rstd1, &mut g.ds1, d);
        be.linear_bwd_x(&g.ds1, &w.o, &mut g.dattn, r, d, d, false);
        be.linear_bwd_w(&g.ds1, &a.attn, &mut gw.o, r, d, d);
        if self.rope && be.fuses_rope_attention(s.head_dim) {
            let (c, sn) = (&self.cos, &self.sin);
            let (b, sq, h, hd) = (s.batch, s.seq, s.heads, s.head_dim);
            be.attention_rope_bwd(&a.qkv, c, sn, &a.attn, &a.lse, &g.dattn, &mut g.dqkv, b, sq, h, hd);
        } else {
            be.attention_bwd(
                &a.qkv,
                &a.attn,
                &a.lse,
                &g.dattn,
                &mut g.dqkv,
                s.batch,
                s.seq,
                s.heads,
                s.head_dim,
            );
            if self.rope {
                be.rope_bwd(&mut g.dqkv, &self.cos, &self.sin, s.seq, s.heads, s.head_dim);
            }
        }
        be.copy(&g.ds1, &mut g.dnext);
        be.linear_bwd_x(&g.dqkv, &w.qkv, &mut g.dnext, r, d, 3 * d, true);
        be.linear_bwd_w(&g.dqkv, input, &mut gw.qkv, r, d, 3 * d);
    }

    /// `z = layers(z + injection)` without keeping activations (the no-grad updates). Each
    /// block writes `scratch.out`, which then trades places with `z` (no copy; an even number
    /// of trades, or one copy at the end, leaves `z` in its own buffer).
    fn module_nograd(
        &self,
        be: &B,
        s: &Shape,
        layers: &[LayerParams<B::Param>],
        z: &mut B::Act,
        injection: Injection<'_, B>,
        scratch: &mut LayerActs<B>,
    ) {
        match injection {
            Injection::Of(a) => be.add_inplace(z, a),
            Injection::HPlusX(z_h, x) => be.add_injection_inplace(z, z_h, x),
        }
        for (k, w) in layers.iter().enumerate() {
            self.block_fwd(be, s, w, z, scratch);
            if k + 1 == layers.len() && layers.len() % 2 == 1 {
                // An odd count copies the last output back, so `z` ends in the buffer it began
                // in: the buffers' roles are the same after every update (a recorded step
                // replays with the arrangement it was recorded with).
                be.copy(&scratch.out, z);
            } else {
                std::mem::swap(z, &mut scratch.out);
            }
        }
    }

    /// `z = layers(z + injection)` keeping what the backward needs in `acts`.
    fn module_grad(
        &self,
        be: &B,
        s: &Shape,
        layers: &[LayerParams<B::Param>],
        z: &mut B::Act,
        injection: Injection<'_, B>,
        acts: &mut ModuleActs<B>,
    ) {
        match injection {
            Injection::Of(a) => be.add(z, a, &mut acts.input),
            Injection::HPlusX(z_h, x) => be.add_injection(z, z_h, x, &mut acts.input),
        }
        self.module_blocks_fwd(be, s, layers, acts);
        // The saved output stays with the activations (the norm's backward reads it).
        be.copy(&acts.layers.last().expect("at least one layer").out, z);
    }

    /// The blocks of a module application from `acts.input`, keeping their activations in
    /// `acts` (the forward of [`Hrm::module_grad`], and its recomputation in the backward).
    fn module_blocks_fwd(
        &self,
        be: &B,
        s: &Shape,
        layers: &[LayerParams<B::Param>],
        acts: &mut ModuleActs<B>,
    ) {
        for (k, w) in layers.iter().enumerate() {
            let (done, rest) = acts.layers.split_at_mut(k);
            let inp = done.last().map(|p| &p.out).unwrap_or(&acts.input);
            self.block_fwd(be, s, w, inp, &mut rest[0]);
        }
    }

    fn module_bwd(
        &self,
        be: &B,
        s: &Shape,
        layers: &[LayerParams<B::Param>],
        acts: &ModuleActs<B>,
        g: &mut GradScratch<B>,
        gw: &mut [LayerParams<B::F32>],
    ) {
        for k in (0..layers.len()).rev() {
            let input = if k == 0 { &acts.input } else { &acts.layers[k - 1].out };
            self.block_bwd(be, s, &layers[k], input, &acts.layers[k], g, &mut gw[k]);
        }
    }

    /// One ACT segment on the carry (`z_h`, `z_l` updated in place to the new, detached carry)
    /// from the embedding in `ws`. With `keep` the last L and H updates keep their activations
    /// in `ws` for `segment_bwd`. The logits are left in `ws`, the q logits in its ACT state
    /// ([`Workspace::heads`] reads them back).
    pub fn segment(&self, be: &B, ws: &mut Workspace<B>, z_h: &mut B::Act, z_l: &mut B::Act, keep: bool) {
        self.segment_into(be, ws, z_h, z_l, keep, QSlot::Current)
    }

    fn segment_into(
        &self,
        be: &B,
        ws: &mut Workspace<B>,
        z_h: &mut B::Act,
        z_l: &mut B::Act,
        keep: bool,
        slot: QSlot,
    ) {
        if keep {
            ws.ensure_train(be, &self.cfg, self.saved);
        }
        let s = ws.shape;
        let p = &self.params;
        let (hc, lc) = (self.cfg.H_cycles, self.cfg.L_cycles);
        let Workspace { x, scratch, train, .. } = ws;
        if self.cfg.is_trm() {
            // One network for both updates; the whole last recursion carries the gradient.
            let net = &p.l_layers;
            for _ in 0..hc - keep as usize {
                for _ in 0..lc {
                    self.module_nograd(be, &s, net, z_l, Injection::HPlusX(z_h, x), scratch);
                }
                self.module_nograd(be, &s, net, z_h, Injection::Of(z_l), scratch);
            }
            if keep {
                let t = train.as_mut().expect("allocated above");
                for k in 0..lc {
                    let slot = t.slot(k);
                    let acts = &mut t.l[slot];
                    self.module_grad(be, &s, net, z_l, Injection::HPlusX(z_h, x), acts);
                    if let Some(input) = t.inputs.get_mut(k) {
                        be.copy(&acts.input, input);
                    }
                }
                self.module_grad(be, &s, net, z_h, Injection::Of(z_l), &mut t.h);
            }
            return self.heads(be, ws, z_h, slot);
        }
        for h in 0..hc {
            for l in 0..lc {
                let last = h == hc - 1 && l == lc - 1;
                if !last || !keep {
                    self.module_nograd(be, &s, &p.l_layers, z_l, Injection::HPlusX(z_h, x), scratch);
                }
            }
            if h != hc - 1 || !keep {
                self.module_nograd(be, &s, &p.h_layers, z_h, Injection::Of(z_l), scratch);
            }
        }
        if keep {
            let t = train.as_mut().expect("allocated above");
            self.module_grad(be, &s, &p.l_layers, z_l, Injection::HPlusX(z_h, x), &mut t.l[0]);
            self.module_grad(be, &s, &p.h_layers, z_h, Injection::Of(z_l), &mut t.h);
        }
        self.heads(be, ws, z_h, slot)
    }

    /// The target-Q segment of a training step: one more no-grad segment from a copy of the new
    /// carry, with the same input, its q logits into the target slot of the ACT state. Leaves
    /// the carry (and the saved activations) untouched.
    pub fn target_segment(&self, be: &B, ws: &mut Workspace<B>, z_h: &B::Act, z_l: &B::Act) {
        ws.ensure_train(be, &self.cfg, self.saved);
        let t = ws.train.as_mut().expect("allocated above");
        let (mut zh, mut zl) = t.target.take().expect("the target buffers are home between segments");
        be.copy(z_h, &mut zh);
        be.copy(z_l, &mut zl);
        self.segment_into(be, ws, &mut zh, &mut zl, false, QSlot::Target);
        ws.train.as_mut().expect("allocated above").target = Some((zh, zl));
    }

    fn heads(&self, be: &B, ws: &mut Workspace<B>, z_h: &B::Act, slot: QSlot) {
        let s = ws.shape;
        let (d, v, n, pre) = (s.hidden, self.cfg.vocab_size, self.cfg.seq_len, self.cfg.puzzle_emb_len());
        be.gather_positions(z_h, &mut ws.cells, s.seq, pre, n, d);
        be.linear_fwd(&ws.cells, &self.params.lm_head, &mut ws.logits, s.batch * n, d, v);
        let p = &self.params;
        be.q_head_fwd(z_h, &p.q_head_weight, &p.q_head_bias, &mut ws.act, slot, s.batch, s.seq, d);
    }

    /// Backward of the last `segment(.., keep = true)` from the gradient of the logits (in
    /// `ws`, see [`Workspace::loss_views`]) and of the q logits (in the ACT state, from
    /// `Backend::act_q_loss`); parameter gradients accumulate into `grads`.
    pub fn segment_bwd(&self, be: &B, ws: &mut Workspace<B>, grads: &mut ParamSet<B::F32>) {
        let s = ws.shape;
        let (d, v, n, pre) = (s.hidden, self.cfg.vocab_size, self.cfg.seq_len, self.cfg.puzzle_emb_len());
        let batch = s.batch;
        let Workspace { cells, train, inputs, act, .. } = ws;
        let t = train.as_mut().expect("segment_bwd needs a segment with keep = true");
        let z_h = &t.h.layers.last().expect("H has layers").out;
        // Heads: the gradient of z_H lands in g.dnext.
        be.zero_act(&mut t.g.dnext);
        be.gather_positions(z_h, cells, s.seq, pre, n, d);
        be.linear_bwd_w(&t.dlogits, cells, &mut grads.lm_head, batch * n, d, v);
        be.linear_bwd_x(&t.dlogits, &self.params.lm_head, &mut t.dcells, batch * n, d, v, false);
        be.scatter_add_positions(&t.dcells, &mut t.g.dnext, s.seq, pre, n, d);
        be.q_head_bwd(
            act,
            z_h,
            &self.params.q_head_weight,
            &mut grads.q_head_weight,
            &mut grads.q_head_bias,
            &mut t.g.dnext,
            s.seq,
            d,
        );
        // H module, then L module (z_H = H(z_H, z_L): the gradient reaches z_L only).
        let p = &self.params;
        let (h_net, h_grads) = if self.cfg.is_trm() {
            (&p.l_layers, &mut grads.l_layers)
        } else {
            (&p.h_layers, &mut grads.h_layers)
        };
        self.module_bwd(be, &s, h_net, &t.h, &mut t.g, h_grads);
        // d(input of H) = d(z_L new) = d(output of the last L update). Each L update's input is
        // z_L + z_H + x with z_H constant in the segment: its gradient goes on to the previous
        // z_L and to x (summed over TRM's n updates; HRM has one).
        // (recomputed: each z-update but the last runs its forward again from its saved input)
        let calls = t.z_updates();
        for k in (0..calls).rev() {
            let slot = t.slot(k);
            if let Some(input) = t.inputs.get(k) {
                be.copy(input, &mut t.l[slot].input);
                self.module_blocks_fwd(be, &s, &p.l_layers, &mut t.l[slot]);
            }
            self.module_bwd(be, &s, &p.l_layers, &t.l[slot], &mut t.g, &mut grads.l_layers);
            if let Some(dx) = t.dx.as_mut() {
                if k + 1 == calls {
                    be.copy(&t.g.dnext, dx);
                } else {
                    be.add_inplace(dx, &t.g.dnext);
                }
            }
        }
        let dx = t.dx.as_ref().unwrap_or(&t.g.dnext);
        be.embed_bwd(
            dx,
            &inputs.tokens,
            &mut grads.embed_tokens,
            grads.puzzle_emb.as_mut(),
            grads.embed_pos.as_mut(),
            &self.embed_dims(batch),
        );
    }
}

/// Matrix-product FLOPs of the model (2 per multiply-add; elementwise work is not counted, as
/// MFU is conventionally reported), for throughput and MFU figures.
pub mod flops {
    use crate::config::ModelConfig;

    /// One transformer block forward on `batch` sequences: the four projections plus the two
    /// attention products (QK^T and PV) over the whole sequence, or TRM's token-mixing SwiGLU
    /// (S -> 2t -> S per row and channel), then the channel SwiGLU.
    pub fn block_forward(cfg: &ModelConfig, batch: usize) -> f64 {
        let (s, d, i) = (cfg.total_seq_len() as f64, cfg.hidden_size as f64, cfg.intermediate_size() as f64);
        let rows = batch as f64 * s;
        let mixer = if cfg.uses_mlp_t() {
            2.0 * batch as f64 * d * 3.0 * s * cfg.token_intermediate_size() as f64
        } else {
            2.0 * rows * 4.0 * d * d + 4.0 * batch as f64 * s * s * d
        };
        mixer + 2.0 * rows * 3.0 * d * i
    }

    /// The output heads (lm_head on the cells, q_head on position 0).
    pub fn heads_forward(cfg: &ModelConfig, batch: usize) -> f64 {
        2.0 * batch as f64 * cfg.hidden_size as f64 * (cfg.seq_len * cfg.vocab_size + 2) as f64
    }

    /// Block applications of one segment: H_cycles * (L_cycles L updates + one H update).
    fn segment_blocks(cfg: &ModelConfig) -> usize {
        if cfg.is_trm() {
            cfg.H_cycles * (cfg.L_cycles + 1) * cfg.L_layers
        } else {
            cfg.H_cycles * (cfg.L_cycles * cfg.L_layers + cfg.H_layers)
        }
    }

    /// One segment forward, then the heads.
    pub fn segment_forward(cfg: &ModelConfig, batch: usize) -> f64 {
        segment_blocks(cfg) as f64 * block_forward(cfg, batch) + heads_forward(cfg, batch)
    }

    /// One training step: the gradient-carrying segment, HRM's target-Q segment, and the
    /// backward (twice the forward) of the gradient-carrying updates (HRM: the last L and H
    /// updates; TRM: the whole last recursion, n + 1 network calls) and the heads.
    pub fn train_step(cfg: &ModelConfig, batch: usize) -> f64 {
        let (segments, grad_blocks) = if cfg.is_trm() {
            (1.0, ((cfg.L_cycles + 1) * cfg.L_layers) as f64)
        } else {
            (2.0, (cfg.L_layers + cfg.H_layers) as f64)
        };
        segments * segment_forward(cfg, batch)
            + 2.0 * (grad_blocks * block_forward(cfg, batch) + heads_forward(cfg, batch))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn sudoku_step_is_about_28_tflop() {
            // 768 x 82 tokens, d = 512, 4 layers per module, 2 x 2 cycles: ~28 TFLOP, i.e. the
            // ~28.5 ms arithmetic floor at 989 TFLOP/s quoted for the H200.
            let f = super::train_step(&crate::config::ModelConfig::sudoku(), 768);
            assert!((2.7e13..2.9e13).contains(&f), "{f:e}");
        }

        #[test]
        fn trm_sudoku_steps_match_the_napkin_math() {
            // TRM_SPEC section 8: per layer application 469 GF (MLP) / 523 GF (attention) at
            // batch 768; a step is 21 x 2 forward plus 2 x 14 backward: 32.8 and 36.6 TF.
            use crate::config::ModelConfig;
            let (mlp, att) = (ModelConfig::trm_sudoku_mlp(), ModelConfig::trm_sudoku_att());
            let b = super::block_forward(&mlp, 768);
            assert!((4.65e11..4.73e11).contains(&b), "{b:e}");
            let b = super::block_forward(&att, 768);
            assert!((5.2e11..5.26e11).contains(&b), "{b:e}");
            let f = super::train_step(&mlp, 768);
            assert!((3.25e13..3.31e13).contains(&f), "{f:e}");
            let f = super::train_step(&att, 768);
            assert!((3.63e13..3.69e13).contains(&f), "{f:e}");
        }
    }
}
