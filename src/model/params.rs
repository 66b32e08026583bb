//! The parameter set with the reference's `state_dict` names, shapes and initialization.
//!
//! `ParamSet<T>` is generic over the storage so the same layout serves host tensors
//! (`Vec<f32>`), gradients and optimizer moments, and device buffers.

use crate::config::{ModelConfig, PosEncodings};
use crate::rng::{HrmRng, trunc_normal};

/// Weights of one transformer block (no norms weights: HRM's RMSNorm has none).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerParams<T> {
    /// The token mixer's first weight. Attention: [3*hidden, hidden], q heads, k heads, v heads.
    /// TRM's `mlp_t`: [2*token_inter, S], the token SwiGLU's gate then up.
    pub qkv: T,
    /// The token mixer's second weight. Attention: [hidden, hidden]. `mlp_t`: [S, token_inter].
    pub o: T,
    /// [2*inter, hidden]: gate then up.
    pub gate_up: T,
    /// [hidden, inter]
    pub down: T,
}

/// What a tensor is to the optimizers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TensorKind {
    /// Trained by AdamATan2.
    Trainable,
    /// The puzzle embedding table: trained by sparse SignSGD on the rows of the batch's ids.
    /// Its gradient is one row per batch row, and it has no optimizer moments and no EMA (as
    /// the reference's buffer), so sets of those hold no table (`ParamSet::dense_from_specs`).
    SparseEmbedding,
    /// Fixed buffer (H_init, L_init).
    Buffer,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ParamSet<T> {
    pub embed_tokens: T,
    pub lm_head: T,
    pub q_head_weight: T,
    pub q_head_bias: T,
    /// [num_puzzle_identifiers, puzzle_emb_ndim]; absent when puzzle_emb_ndim == 0, and in the
    /// dense sets (optimizer moments, EMA). In a gradient set: [batch rows, puzzle_emb_ndim],
    /// each batch row's gradient (the sparse step sums them per id).
    pub puzzle_emb: Option<T>,
    /// [seq_len + puzzle_emb_len, hidden] when pos_encodings == learned.
    pub embed_pos: Option<T>,
    pub h_layers: Vec<LayerParams<T>>,
    pub l_layers: Vec<LayerParams<T>>,
    pub h_init: T,
    pub l_init: T,
}

/// Name, shape and kind of one tensor of the state dict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: TensorKind,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

const PREFIX: &str = "model.inner.";

/// The state dict's tensors in the reference module order.
pub fn tensor_specs(cfg: &ModelConfig) -> Vec<TensorSpec> {
    let (d, i, v) = (cfg.hidden_size, cfg.intermediate_size(), cfg.vocab_size);
    let mut specs = Vec::new();
    let mut push = |name: String, shape: Vec<usize>, kind| {
        specs.push(TensorSpec { name: format!("{PREFIX}{name}"), shape, kind })
    };
    use TensorKind::*;
    push("embed_tokens.embedding_weight".into(), vec![v, d], Trainable);
    push("lm_head.weight".into(), vec![v, d], Trainable);
    push("q_head.weight".into(), vec![2, d], Trainable);
    push("q_head.bias".into(), vec![2], Trainable);
    if cfg.puzzle_emb_ndim > 0 {
        push(
            "puzzle_emb.weights".into(),
            vec![cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim],
            SparseEmbedding,
        );
    }
    if cfg.pos_encodings == PosEncodings::Learned {
        push("embed_pos.embedding_weight".into(), vec![cfg.total_seq_len(), d], Trainable);
    }
    let (h_layers, l_layers) = module_layers(cfg);
    for (level, n) in [("H_level", h_layers), ("L_level", l_layers)] {
        for l in 0..n {
            let p = format!("{level}.layers.{l}.");
            if cfg.uses_mlp_t() {
                let (sq, it) = (cfg.total_seq_len(), cfg.token_intermediate_size());
                push(format!("{p}mlp_t.gate_up_proj.weight"), vec![2 * it, sq], Trainable);
                push(format!("{p}mlp_t.down_proj.weight"), vec![sq, it], Trainable);
            } else {
                push(format!("{p}self_attn.qkv_proj.weight"), vec![3 * d, d], Trainable);
                push(format!("{p}self_attn.o_proj.weight"), vec![d, d], Trainable);
            }
            push(format!("{p}mlp.gate_up_proj.weight"), vec![2 * i, d], Trainable);
            push(format!("{p}mlp.down_proj.weight"), vec![d, i], Trainable);
        }
    }
    push("H_init".into(), vec![d], Buffer);
    push("L_init".into(), vec![d], Buffer);
    specs
}

/// The specs of the dense tensors: all but the puzzle embedding table (what the optimizer
/// moments and the EMA hold), in `tensor_specs` order.
pub fn dense_specs(cfg: &ModelConfig) -> Vec<TensorSpec> {
    tensor_specs(cfg).into_iter().filter(|s| s.kind != TensorKind::SparseEmbedding).collect()
}

/// Blocks of the H and L modules: HRM's H_layers and L_layers; TRM has only `L_level` (its
/// one network, used for both updates; H_layers is ignored as in the reference).
pub fn module_layers(cfg: &ModelConfig) -> (usize, usize) {
    if cfg.is_trm() { (0, cfg.L_layers) } else { (cfg.H_layers, cfg.L_layers) }
}

impl<T> ParamSet<T> {
    /// Every tensor in `tensor_specs` order.
    pub fn tensors(&self) -> Vec<&T> {
        self.collect(true)
    }

    /// Every tensor but the puzzle table, in `dense_specs` order.
    pub fn dense_tensors(&self) -> Vec<&T> {
        self.collect(false)
    }

    fn collect(&self, with_table: bool) -> Vec<&T> {
        let mut out = vec![&self.embed_tokens, &self.lm_head, &self.q_head_weight, &self.q_head_bias];
        out.extend(self.puzzle_emb.as_ref().filter(|_| with_table));
        out.extend(self.embed_pos.as_ref());
        for l in self.h_layers.iter().chain(&self.l_layers) {
            out.extend([&l.qkv, &l.o, &l.gate_up, &l.down]);
        }
        out.extend([&self.h_init, &self.l_init]);
        out
    }

    pub fn tensors_mut(&mut self) -> Vec<&mut T> {
        self.collect_mut(true)
    }

    /// [`ParamSet::dense_tensors`], mutable.
    pub fn dense_tensors_mut(&mut self) -> Vec<&mut T> {
        self.collect_mut(false)
    }

    fn collect_mut(&mut self, with_table: bool) -> Vec<&mut T> {
        let mut out =
            vec![&mut self.embed_tokens, &mut self.lm_head, &mut self.q_head_weight, &mut self.q_head_bias];
        out.extend(self.puzzle_emb.as_mut().filter(|_| with_table));
        out.extend(self.embed_pos.as_mut());
        for l in self.h_layers.iter_mut().chain(self.l_layers.iter_mut()) {
            out.extend([&mut l.qkv, &mut l.o, &mut l.gate_up, &mut l.down]);
        }
        out.extend([&mut self.h_init, &mut self.l_init]);
        out
    }

    /// Build a set from one value per spec, in `tensor_specs` order.
    pub fn from_specs(cfg: &ModelConfig, make: impl FnMut(&TensorSpec) -> T) -> Self {
        Self::build(cfg, true, make)
    }

    /// Build a dense set (no puzzle embedding table) from one value per spec of
    /// [`dense_specs`], in order.
    pub fn dense_from_specs(cfg: &ModelConfig, make: impl FnMut(&TensorSpec) -> T) -> Self {
        Self::build(cfg, false, make)
    }

    /// Whether the set holds the puzzle embedding slot (a full set of a model with one).
    pub fn has_table(&self) -> bool {
        self.puzzle_emb.is_some()
    }

    fn build(cfg: &ModelConfig, with_table: bool, mut make: impl FnMut(&TensorSpec) -> T) -> Self {
        let specs = if with_table { tensor_specs(cfg) } else { dense_specs(cfg) };
        let mut it = specs.iter().map(&mut make);
        let mut next = || it.next().expect("spec count matches the parameter layout");
        let embed_tokens = next();
        let lm_head = next();
        let q_head_weight = next();
        let q_head_bias = next();
        let puzzle_emb = (with_table && cfg.puzzle_emb_ndim > 0).then(&mut next);
        let embed_pos = (cfg.pos_encodings == PosEncodings::Learned).then(&mut next);
        let mut layers = |n: usize| -> Vec<LayerParams<T>> {
            (0..n).map(|_| LayerParams { qkv: next(), o: next(), gate_up: next(), down: next() }).collect()
        };
        let (h, l) = module_layers(cfg);
        let h_layers = layers(h);
        let l_layers = layers(l);
        let h_init = next();
        let l_init = next();
        ParamSet {
            embed_tokens,
            lm_head,
            q_head_weight,
            q_head_bias,
            puzzle_emb,
            embed_pos,
            h_layers,
            l_layers,
            h_init,
            l_init,
        }
    }

    /// The set of `f(spec, tensor)`, holding the table slot where this set does.
    pub fn map<U>(&self, cfg: &ModelConfig, mut f: impl FnMut(&TensorSpec, &T) -> U) -> ParamSet<U> {
        if !self.has_table() {
            return self.map_dense(cfg, f);
        }
        let tensors = self.tensors();
        let mut k = 0;
        ParamSet::from_specs(cfg, |spec| {
            k += 1;
            f(spec, tensors[k - 1])
        })
    }

    /// The dense part of the set (every tensor but the puzzle table) mapped by `f`.
    pub fn map_dense<U>(&self, cfg: &ModelConfig, mut f: impl FnMut(&TensorSpec, &T) -> U) -> ParamSet<U> {
        let tensors = self.dense_tensors();
        let mut k = 0;
        ParamSet::dense_from_specs(cfg, |spec| {
            k += 1;
            f(spec, tensors[k - 1])
        })
    }
}

pub type HostParams = ParamSet<Vec<f32>>;

/// The gradient of the whole puzzle table [num_ids, row_len] from one gradient row per batch
/// row (`rows` [ids.len(), row_len]): each row added to its id's, in row order (what a dense
/// scatter-add backward would give; for comparing with reference gradients of the table). Ids
/// outside the table are left out.
pub fn scatter_puzzle_rows(rows: &[f32], ids: &[i32], num_ids: usize, row_len: usize) -> Vec<f32> {
    assert_eq!(rows.len(), ids.len() * row_len, "one gradient row per puzzle id");
    let mut table = vec![0f32; num_ids * row_len];
    for (g, &id) in rows.chunks(row_len).zip(ids) {
        if let Some(t) = usize::try_from(id).ok().filter(|&i| i < num_ids) {
            table[t * row_len..(t + 1) * row_len].iter_mut().zip(g).for_each(|(a, x)| *a += x);
        }
    }
    table
}

impl HostParams {
    pub fn zeros(cfg: &ModelConfig) -> Self {
        Self::from_specs(cfg, |s| vec![0.0; s.numel()])
    }

    /// The reference initialization: truncated normal (std 1/sqrt(fan_in) for linear weights,
    /// 1/sqrt(hidden) for embeddings, 1 for H_init/L_init), q_head weight 0 and bias -5,
    /// zero puzzle embedding. One ChaCha8 stream in state-dict order.
    pub fn init(cfg: &ModelConfig, rng: &mut HrmRng) -> Self {
        let embed_std = 1.0 / (cfg.hidden_size as f64).sqrt();
        Self::from_specs(cfg, |s| {
            let mut t = vec![0.0f32; s.numel()];
            let short = &s.name[PREFIX.len()..];
            match short {
                "q_head.weight" | "puzzle_emb.weights" => {}
                "q_head.bias" => t.fill(-5.0),
                "H_init" | "L_init" => trunc_normal(rng, &mut t, 1.0),
                n if n.starts_with("embed_") => trunc_normal(rng, &mut t, embed_std),
                _ => trunc_normal(rng, &mut t, 1.0 / (s.shape[1] as f64).sqrt()),
            }
            t
        })
    }

    pub fn num_trainable(&self, cfg: &ModelConfig) -> usize {
        tensor_specs(cfg).iter().filter(|s| s.kind == TensorKind::Trainable).map(|s| s.numel()).sum()
    }
}
