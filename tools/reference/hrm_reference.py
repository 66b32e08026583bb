#!/usr/bin/env python3
"""Self-contained PyTorch reference of HRM (sapientinc/HRM) for validating the Rust port.

Mirrors, in plain PyTorch with forward dtype float32:
  models/common.py        trunc_normal_init_
  models/layers.py        rotate_half, apply_rotary_pos_emb, CastedLinear, CastedEmbedding,
                          RotaryEmbedding, Attention (explicit softmax instead of flash-attn),
                          SwiGLU, rms_norm
  models/sparse_embedding.py  CastedSparseEmbedding, CastedSparseEmbeddingSignSGD_Distributed
  models/hrm/hrm_act_v1.py    Block, ReasoningModule, Inner, ACT wrapper
  models/losses.py        stablemax_cross_entropy (float64), ACTLossHead
  adam_atan2 (CUDA kernel csrc/adam_atan2.cu) -> AdamATan2 re-implemented in torch
  pretrain.py             cosine_schedule_with_warmup_lr_lambda, compute_lr, train_batch

Module/parameter names are identical to the official code, so state_dict() keys match
(`model.inner....`).  Run `python hrm_reference.py --help`.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import Optimizer

CosSin = Tuple[torch.Tensor, torch.Tensor]


# ----------------------------------------------------------------------------------------------
# models/common.py
# ----------------------------------------------------------------------------------------------
def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0):
    # JAX-style truncated normal (the realised std equals `std`).
    with torch.no_grad():
        if std == 0:
            tensor.zero_()
        else:
            sqrt2 = math.sqrt(2)
            a = math.erf(lower / sqrt2)
            b = math.erf(upper / sqrt2)
            z = (b - a) / 2

            c = (2 * math.pi) ** -0.5
            pdf_u = c * math.exp(-0.5 * lower ** 2)
            pdf_l = c * math.exp(-0.5 * upper ** 2)
            comp_std = std / math.sqrt(1 - (upper * pdf_u - lower * pdf_l) / z - ((pdf_u - pdf_l) / z) ** 2)

            tensor.uniform_(a, b)
            tensor.erfinv_()
            tensor.mul_(sqrt2 * comp_std)
            tensor.clip_(lower * comp_std, upper * comp_std)
    return tensor


# ----------------------------------------------------------------------------------------------
# models/layers.py
# ----------------------------------------------------------------------------------------------
def _find_multiple(a, b):
    return (-(a // -b)) * b


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    # Official code up-casts to float32.  Only the float64 finite-difference copy of the model
    # (never used for fixtures) keeps float64 here.
    return torch.float64 if dtype == torch.float64 else torch.float32


def rotate_half(x: torch.Tensor):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    # q, k: [bs, seq_len, num_heads, head_dim]; cos, sin: [seq_len, head_dim]
    orig_dtype = q.dtype
    q = q.to(cos.dtype)
    k = k.to(cos.dtype)
    q_embed = (q * cos.unsqueeze(-2)) + (rotate_half(q) * sin.unsqueeze(-2))
    k_embed = (k * cos.unsqueeze(-2)) + (rotate_half(k) * sin.unsqueeze(-2))
    return q_embed.to(orig_dtype), k_embed.to(orig_dtype)


class CastedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty((out_features, in_features)), std=1.0 / (in_features ** 0.5)))
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.zeros((out_features,)))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(input, self.weight.to(input.dtype), bias=self.bias.to(input.dtype) if self.bias is not None else None)


class CastedEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(trunc_normal_init_(torch.empty((num_embeddings, embedding_dim)), std=init_std))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.embedding(input, self.embedding_weight.to(self.cast_to))


class RotaryEmbedding(nn.Module):
    def __init__(self, dim, max_position_embeddings, base, device=None, dtype=torch.float32):
        super().__init__()
        # `dtype` is float32 in the official code; float64 only for the FD-check model copy.
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=dtype, device=device) / dim))
        t = torch.arange(max_position_embeddings, dtype=dtype, device=device)
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos_cached = nn.Buffer(emb.cos(), persistent=False)
        self.sin_cached = nn.Buffer(emb.sin(), persistent=False)

    def forward(self):
        return self.cos_cached, self.sin_cached


def _attention_explicit(q, k, v, causal=False):
    """Replacement for flash_attn_func: q,k,v [bs, seq, heads, head_dim] -> [bs, seq, heads, head_dim]."""
    q = q.transpose(1, 2)
    k = k.transpose(1, 2)
    v = v.transpose(1, 2)
    scale = q.shape[-1] ** -0.5
    attn_weights = torch.matmul(q, k.transpose(-2, -1)) * scale
    if causal:
        s = q.shape[-2]
        mask = torch.triu(torch.ones(s, s, device=q.device), diagonal=1).bool()
        attn_weights = attn_weights.masked_fill(mask, float('-inf'))
    attn_weights = F.softmax(attn_weights, dim=-1)
    return torch.matmul(attn_weights, v).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, hidden_size, head_dim, num_heads, num_key_value_heads, causal=False):
        super().__init__()
        self.hidden_size = hidden_size
        self.head_dim = head_dim
        self.output_size = head_dim * num_heads
        self.num_heads = num_heads
        self.num_key_value_heads = num_key_value_heads
        self.causal = causal
        self.qkv_proj = CastedLinear(self.hidden_size, (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim, bias=False)
        self.o_proj = CastedLinear(self.output_size, self.hidden_size, bias=False)

    def forward(self, cos_sin: Optional[CosSin], hidden_states: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states)
        qkv = qkv.view(batch_size, seq_len, self.num_heads + 2 * self.num_key_value_heads, self.head_dim)
        query = qkv[:, :, :self.num_heads]
        key = qkv[:, :, self.num_heads: self.num_heads + self.num_key_value_heads]
        value = qkv[:, :, self.num_heads + self.num_key_value_heads:]
        if cos_sin is not None:
            cos, sin = cos_sin
            query, key = apply_rotary_pos_emb(query, key, cos, sin)
        attn_output = _attention_explicit(query, key, value, causal=self.causal)
        attn_output = attn_output.reshape(batch_size, seq_len, self.output_size)
        return self.o_proj(attn_output)


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        inter = _find_multiple(round(expansion * hidden_size * 2 / 3), 256)
        self.gate_up_proj = CastedLinear(hidden_size, inter * 2, bias=False)
        self.down_proj = CastedLinear(inter, hidden_size, bias=False)

    def forward(self, x):
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


def rms_norm(hidden_states: torch.Tensor, variance_epsilon: float) -> torch.Tensor:
    input_dtype = hidden_states.dtype
    hidden_states = hidden_states.to(_math_dtype(input_dtype))
    variance = hidden_states.square().mean(-1, keepdim=True)
    hidden_states = hidden_states * torch.rsqrt(variance + variance_epsilon)
    return hidden_states.to(input_dtype)


# ----------------------------------------------------------------------------------------------
# models/sparse_embedding.py
# ----------------------------------------------------------------------------------------------
class CastedSparseEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, batch_size: int, init_std: float, cast_to: torch.dtype, device='cpu'):
        super().__init__()
        self.cast_to = cast_to
        self.weights = nn.Buffer(trunc_normal_init_(torch.empty((num_embeddings, embedding_dim), device=device), std=init_std), persistent=True)
        self.local_weights = nn.Buffer(torch.zeros(batch_size, embedding_dim, device=device, requires_grad=True), persistent=False)
        self.local_ids = nn.Buffer(torch.zeros(batch_size, dtype=torch.int32, device=device), persistent=False)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.weights[inputs].to(self.cast_to)
        with torch.no_grad():
            self.local_weights.copy_(self.weights[inputs])
            self.local_ids.copy_(inputs)
        return self.local_weights.to(self.cast_to)


class CastedSparseEmbeddingSignSGD_Distributed(Optimizer):
    """Single-process version (world_size 1: no all-gather)."""

    def __init__(self, params, world_size: int = 1, lr: float = 1e-3, weight_decay: float = 1e-2):
        defaults = dict(lr=lr, weight_decay=weight_decay, world_size=world_size)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore
        for group in self.param_groups:
            local_weights_grad = None
            local_ids = None
            weights = None
            assert len(group["params"]) == 3
            for p in group["params"]:
                if p.requires_grad:
                    local_weights_grad = p.grad
                elif p.ndim == 1:
                    local_ids = p
                elif p.ndim == 2:
                    weights = p
                else:
                    assert False
            assert local_weights_grad is not None and local_ids is not None and weights is not None
            _sparse_emb_signsgd_dist(local_weights_grad, local_ids, weights, lr=group["lr"], weight_decay=group["weight_decay"])


def _sparse_emb_signsgd_dist(local_weights_grad, local_ids, weights, lr: float, weight_decay: float) -> None:
    N, D = local_weights_grad.shape
    grad_ids, inv = local_ids.unique(return_inverse=True)
    grad = torch.zeros((grad_ids.shape[0], D), dtype=local_weights_grad.dtype, device=local_weights_grad.device)
    grad.scatter_add_(0, inv.unsqueeze(-1).expand(-1, D), local_weights_grad)
    p = weights[grad_ids]
    p.mul_(1.0 - lr * weight_decay).add_(torch.sign(grad), alpha=-lr)
    weights[grad_ids] = p


def dense_puzzle_emb_grad(puzzle_emb: CastedSparseEmbedding) -> torch.Tensor:
    """local_weights.grad scatter-added per id into [num_puzzle_identifiers, D] (what SignSGD consumes)."""
    g = torch.zeros_like(puzzle_emb.weights)
    g.index_add_(0, puzzle_emb.local_ids.to(torch.long), puzzle_emb.local_weights.grad.to(g.dtype))
    return g


# ----------------------------------------------------------------------------------------------
# adam_atan2 (imoneoi/adam-atan2, CUDA kernel csrc/adam_atan2.cu) re-implemented in torch
# ----------------------------------------------------------------------------------------------
def _f32(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def _lerp_fma(v0: torch.Tensor, v1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # kernel: fma(t, v1, fma(-t, v0, v0)); each fma emulated in float64 and rounded once.
    dt = v0.dtype
    t64 = t.to(torch.float64)
    inner = (v0.to(torch.float64) - t64 * v0.to(torch.float64)).to(dt)
    return (t64 * v1.to(torch.float64) + inner.to(torch.float64)).to(dt)


class AdamATan2(Optimizer):
    """Exactly the adam_atan2 package semantics (no epsilon):
        step += 1
        p  *= 1 - lr*wd
        m   = lerp(m, g, 1-b1);  v = lerp(v, g*g, 1-b2)
        p  -= lr * atan2(m / (1-b1^step), sqrt(v) / sqrt(1-b2^step))
    Scalars are computed in double then cast to float32 (the kernel's opmath type)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-2):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                step = float(state["step"])
                bias_correction1 = 1 - beta1 ** step
                bias_correction2 = 1 - beta2 ** step
                step_size = _f32(lr)
                wd_alpha = _f32(1 - lr * wd)
                bc1_recip = _f32(1 / bias_correction1)
                bc2_sqrt = _f32(math.sqrt(bias_correction2))
                mbeta1 = _f32(1 - beta1)
                mbeta2 = _f32(1 - beta2)

                g = p.grad.to(torch.float32)
                param = p.data.to(torch.float32) * wd_alpha
                exp_avg = _lerp_fma(state["exp_avg"], g, mbeta1)
                exp_avg_sq = _lerp_fma(state["exp_avg_sq"], g * g, mbeta2)
                denom = torch.sqrt(exp_avg_sq) / bc2_sqrt
                param = param - step_size * torch.atan2(bc1_recip * exp_avg, denom)
                p.data.copy_(param)
                state["exp_avg"].copy_(exp_avg)
                state["exp_avg_sq"].copy_(exp_avg_sq)


# ----------------------------------------------------------------------------------------------
# models/hrm/hrm_act_v1.py
# ----------------------------------------------------------------------------------------------
@dataclass
class HierarchicalReasoningModel_ACTV1InnerCarry:
    z_H: torch.Tensor
    z_L: torch.Tensor


@dataclass
class HierarchicalReasoningModel_ACTV1Carry:
    inner_carry: HierarchicalReasoningModel_ACTV1InnerCarry
    steps: torch.Tensor
    halted: torch.Tensor
    current_data: Dict[str, torch.Tensor]


class HierarchicalReasoningModel_ACTV1Config:
    FIELDS = dict(batch_size=None, seq_len=None, puzzle_emb_ndim=0, num_puzzle_identifiers=None, vocab_size=None,
                  H_cycles=None, L_cycles=None, H_layers=None, L_layers=None, hidden_size=None, expansion=None,
                  num_heads=None, pos_encodings=None, rms_norm_eps=1e-5, rope_theta=10000.0, halt_max_steps=None,
                  halt_exploration_prob=None, forward_dtype="bfloat16")

    def __init__(self, **kw):
        for k, default in self.FIELDS.items():
            if k in kw:
                setattr(self, k, kw[k])
            elif default is not None:
                setattr(self, k, default)
            else:
                raise ValueError(f"missing config field {k}")


class HierarchicalReasoningModel_ACTV1Block(nn.Module):
    def __init__(self, config: HierarchicalReasoningModel_ACTV1Config) -> None:
        super().__init__()
        self.self_attn = Attention(hidden_size=config.hidden_size, head_dim=config.hidden_size // config.num_heads,
                                   num_heads=config.num_heads, num_key_value_heads=config.num_heads, causal=False)
        self.mlp = SwiGLU(hidden_size=config.hidden_size, expansion=config.expansion)
        self.norm_eps = config.rms_norm_eps

    def forward(self, cos_sin: CosSin, hidden_states: torch.Tensor) -> torch.Tensor:
        # Post Norm
        hidden_states = rms_norm(hidden_states + self.self_attn(cos_sin=cos_sin, hidden_states=hidden_states), variance_epsilon=self.norm_eps)
        hidden_states = rms_norm(hidden_states + self.mlp(hidden_states), variance_epsilon=self.norm_eps)
        return hidden_states


class HierarchicalReasoningModel_ACTV1ReasoningModule(nn.Module):
    def __init__(self, layers: List[HierarchicalReasoningModel_ACTV1Block]):
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor, input_injection: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden_states = hidden_states + input_injection
        for layer in self.layers:
            hidden_states = layer(hidden_states=hidden_states, **kwargs)
        return hidden_states


class HierarchicalReasoningModel_ACTV1_Inner(nn.Module):
    def __init__(self, config: HierarchicalReasoningModel_ACTV1Config) -> None:
        super().__init__()
        self.config = config
        self.forward_dtype = getattr(torch, self.config.forward_dtype)

        self.embed_scale = math.sqrt(self.config.hidden_size)
        embed_init_std = 1.0 / self.embed_scale

        self.embed_tokens = CastedEmbedding(self.config.vocab_size, self.config.hidden_size, init_std=embed_init_std, cast_to=self.forward_dtype)
        self.lm_head = CastedLinear(self.config.hidden_size, self.config.vocab_size, bias=False)
        self.q_head = CastedLinear(self.config.hidden_size, 2, bias=True)

        self.puzzle_emb_len = -(self.config.puzzle_emb_ndim // -self.config.hidden_size)  # ceil div
        if self.config.puzzle_emb_ndim > 0:
            self.puzzle_emb = CastedSparseEmbedding(self.config.num_puzzle_identifiers, self.config.puzzle_emb_ndim,
                                                    batch_size=self.config.batch_size, init_std=0, cast_to=self.forward_dtype, device='cpu')

        if self.config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(dim=self.config.hidden_size // self.config.num_heads,
                                              max_position_embeddings=self.config.seq_len + self.puzzle_emb_len,
                                              base=self.config.rope_theta, dtype=_math_dtype(self.forward_dtype))
        elif self.config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(self.config.seq_len + self.puzzle_emb_len, self.config.hidden_size, init_std=embed_init_std, cast_to=self.forward_dtype)
        else:
            raise NotImplementedError()

        self.H_level = HierarchicalReasoningModel_ACTV1ReasoningModule(layers=[HierarchicalReasoningModel_ACTV1Block(self.config) for _i in range(self.config.H_layers)])
        self.L_level = HierarchicalReasoningModel_ACTV1ReasoningModule(layers=[HierarchicalReasoningModel_ACTV1Block(self.config) for _i in range(self.config.L_layers)])

        self.H_init = nn.Buffer(trunc_normal_init_(torch.empty(self.config.hidden_size, dtype=self.forward_dtype), std=1), persistent=True)
        self.L_init = nn.Buffer(trunc_normal_init_(torch.empty(self.config.hidden_size, dtype=self.forward_dtype), std=1), persistent=True)

        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)  # type: ignore

    def _input_embeddings(self, input: torch.Tensor, puzzle_identifiers: torch.Tensor):
        embedding = self.embed_tokens(input.to(torch.int32))
        if self.config.puzzle_emb_ndim > 0:
            puzzle_embedding = self.puzzle_emb(puzzle_identifiers)
            pad_count = self.puzzle_emb_len * self.config.hidden_size - puzzle_embedding.shape[-1]
            if pad_count > 0:
                puzzle_embedding = F.pad(puzzle_embedding, (0, pad_count))
            embedding = torch.cat((puzzle_embedding.view(-1, self.puzzle_emb_len, self.config.hidden_size), embedding), dim=-2)
        if self.config.pos_encodings == "learned":
            # scale by 1/sqrt(2) to maintain forward variance
            embedding = 0.707106781 * (embedding + self.embed_pos.embedding_weight.to(self.forward_dtype))
        return self.embed_scale * embedding

    def empty_carry(self, batch_size: int):
        S = self.config.seq_len + self.puzzle_emb_len
        return HierarchicalReasoningModel_ACTV1InnerCarry(
            z_H=torch.empty(batch_size, S, self.config.hidden_size, dtype=self.forward_dtype),
            z_L=torch.empty(batch_size, S, self.config.hidden_size, dtype=self.forward_dtype),
        )

    def reset_carry(self, reset_flag: torch.Tensor, carry: HierarchicalReasoningModel_ACTV1InnerCarry):
        return HierarchicalReasoningModel_ACTV1InnerCarry(
            z_H=torch.where(reset_flag.view(-1, 1, 1), self.H_init, carry.z_H),
            z_L=torch.where(reset_flag.view(-1, 1, 1), self.L_init, carry.z_L),
        )

    def seq_info(self):
        return dict(cos_sin=self.rotary_emb() if hasattr(self, "rotary_emb") else None)

    def forward(self, carry: HierarchicalReasoningModel_ACTV1InnerCarry, batch: Dict[str, torch.Tensor]):
        seq_info = self.seq_info()
        input_embeddings = self._input_embeddings(batch["inputs"], batch["puzzle_identifiers"])

        with torch.no_grad():
            z_H, z_L = carry.z_H, carry.z_L
            for _H_step in range(self.config.H_cycles):
                for _L_step in range(self.config.L_cycles):
                    if not ((_H_step == self.config.H_cycles - 1) and (_L_step == self.config.L_cycles - 1)):
                        z_L = self.L_level(z_L, z_H + input_embeddings, **seq_info)
                if not (_H_step == self.config.H_cycles - 1):
                    z_H = self.H_level(z_H, z_L, **seq_info)
        assert not z_H.requires_grad and not z_L.requires_grad

        # 1-step grad
        z_L = self.L_level(z_L, z_H + input_embeddings, **seq_info)
        z_H = self.H_level(z_H, z_L, **seq_info)

        new_carry = HierarchicalReasoningModel_ACTV1InnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
        output = self.lm_head(z_H)[:, self.puzzle_emb_len:]
        q_logits = self.q_head(z_H[:, 0]).to(_math_dtype(self.forward_dtype))
        return new_carry, output, (q_logits[..., 0], q_logits[..., 1])


class HierarchicalReasoningModel_ACTV1(nn.Module):
    """ACT wrapper."""

    def __init__(self, config_dict: dict):
        super().__init__()
        self.config = HierarchicalReasoningModel_ACTV1Config(**config_dict)
        self.inner = HierarchicalReasoningModel_ACTV1_Inner(self.config)

    @property
    def puzzle_emb(self):
        return self.inner.puzzle_emb

    def initial_carry(self, batch: Dict[str, torch.Tensor]):
        batch_size = batch["inputs"].shape[0]
        return HierarchicalReasoningModel_ACTV1Carry(
            inner_carry=self.inner.empty_carry(batch_size),
            steps=torch.zeros((batch_size,), dtype=torch.int32),
            halted=torch.ones((batch_size,), dtype=torch.bool),
            current_data={k: torch.empty_like(v) for k, v in batch.items()},
        )

    def forward(self, carry: HierarchicalReasoningModel_ACTV1Carry, batch: Dict[str, torch.Tensor]):
        new_inner_carry = self.inner.reset_carry(carry.halted, carry.inner_carry)
        new_steps = torch.where(carry.halted, 0, carry.steps)
        new_current_data = {k: torch.where(carry.halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v) for k, v in carry.current_data.items()}

        new_inner_carry, logits, (q_halt_logits, q_continue_logits) = self.inner(new_inner_carry, new_current_data)
        outputs = {"logits": logits, "q_halt_logits": q_halt_logits, "q_continue_logits": q_continue_logits}

        with torch.no_grad():
            new_steps = new_steps + 1
            is_last_step = new_steps >= self.config.halt_max_steps
            halted = is_last_step
            if self.training and (self.config.halt_max_steps > 1):
                halted = halted | (q_halt_logits > q_continue_logits)
                min_halt_steps = (torch.rand_like(q_halt_logits) < self.config.halt_exploration_prob) * torch.randint_like(new_steps, low=2, high=self.config.halt_max_steps + 1)
                halted = halted & (new_steps >= min_halt_steps)
                next_q_halt_logits, next_q_continue_logits = self.inner(new_inner_carry, new_current_data)[-1]
                outputs["target_q_continue"] = torch.sigmoid(torch.where(is_last_step, next_q_halt_logits, torch.maximum(next_q_halt_logits, next_q_continue_logits)))

        return HierarchicalReasoningModel_ACTV1Carry(new_inner_carry, new_steps, halted, new_current_data), outputs


# ----------------------------------------------------------------------------------------------
# models/losses.py
# ----------------------------------------------------------------------------------------------
IGNORE_LABEL_ID = -100


def s(x, epsilon=1e-30):
    return torch.where(x < 0, 1 / (1 - x + epsilon), x + 1)


def log_stablemax(x, dim=-1):
    s_x = s(x)
    return torch.log(s_x / torch.sum(s_x, dim=dim, keepdim=True))


def stablemax_cross_entropy(logits, labels, ignore_index: int = -100):
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)
    valid_mask = labels != ignore_index
    transformed_labels = torch.where(valid_mask, labels, 0)
    prediction_logprobs = torch.gather(logprobs, index=transformed_labels.to(torch.long).unsqueeze(-1), dim=-1).squeeze(-1)
    return -torch.where(valid_mask, prediction_logprobs, 0)


class ACTLossHead(nn.Module):
    def __init__(self, model: nn.Module, loss_type: str = "stablemax_cross_entropy"):
        super().__init__()
        self.model = model
        self.loss_fn = globals()[loss_type]

    def initial_carry(self, *args, **kwargs):
        return self.model.initial_carry(*args, **kwargs)

    def forward(self, return_keys: Sequence[str], **model_kwargs):
        new_carry, outputs = self.model(**model_kwargs)
        labels = new_carry.current_data["labels"]

        with torch.no_grad():
            mask = labels != IGNORE_LABEL_ID
            loss_counts = mask.sum(-1)
            loss_divisor = loss_counts.clamp_min(1).unsqueeze(-1)
            is_correct = mask & (torch.argmax(outputs["logits"], dim=-1) == labels)
            seq_is_correct = is_correct.sum(-1) == loss_counts
            valid_metrics = new_carry.halted & (loss_counts > 0)
            metrics = {
                "count": valid_metrics.sum(),
                "accuracy": torch.where(valid_metrics, (is_correct.to(torch.float32) / loss_divisor).sum(-1), 0).sum(),
                "exact_accuracy": (valid_metrics & seq_is_correct).sum(),
                "q_halt_accuracy": (valid_metrics & ((outputs["q_halt_logits"] >= 0) == seq_is_correct)).sum(),
                "steps": torch.where(valid_metrics, new_carry.steps, 0).sum(),
            }

        lm_loss = (self.loss_fn(outputs["logits"], labels, ignore_index=IGNORE_LABEL_ID) / loss_divisor).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(outputs["q_halt_logits"], seq_is_correct.to(outputs["q_halt_logits"].dtype), reduction="sum")
        metrics.update({"lm_loss": lm_loss.detach(), "q_halt_loss": q_halt_loss.detach()})

        q_continue_loss = 0
        if "target_q_continue" in outputs:
            q_continue_loss = F.binary_cross_entropy_with_logits(outputs["q_continue_logits"], outputs["target_q_continue"], reduction="sum")
            metrics["q_continue_loss"] = q_continue_loss.detach()

        # Not in the official return value; kept for the fixtures.
        outputs["seq_is_correct"] = seq_is_correct
        detached_outputs = {k: outputs[k].detach() for k in return_keys if k in outputs}
        return new_carry, lm_loss + 0.5 * (q_halt_loss + q_continue_loss), metrics, detached_outputs, new_carry.halted.all()


# ----------------------------------------------------------------------------------------------
# pretrain.py
# ----------------------------------------------------------------------------------------------
def cosine_schedule_with_warmup_lr_lambda(current_step: int, *, base_lr: float, num_warmup_steps: int, num_training_steps: int,
                                          min_ratio: float = 0.0, num_cycles: float = 0.5):
    if current_step < num_warmup_steps:
        return base_lr * float(current_step) / float(max(1, num_warmup_steps))
    progress = float(current_step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    return base_lr * (min_ratio + max(0.0, (1 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))))


@dataclass
class TrainConfig:
    lr: float = 1e-3
    lr_min_ratio: float = 1.0
    lr_warmup_steps: int = 2
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    puzzle_emb_lr: float = 1e-2
    puzzle_emb_weight_decay: float = 0.1


@dataclass
class TrainState:
    model: nn.Module
    optimizers: Sequence[Optimizer]
    optimizer_lrs: Sequence[float]
    carry: Any
    step: int
    total_steps: int


def make_optimizers(model: ACTLossHead, cfg: TrainConfig):
    optimizers = [
        CastedSparseEmbeddingSignSGD_Distributed(model.model.puzzle_emb.buffers(), lr=0, weight_decay=cfg.puzzle_emb_weight_decay, world_size=1),
        AdamATan2(model.parameters(), lr=0, weight_decay=cfg.weight_decay, betas=(cfg.beta1, cfg.beta2)),
    ]
    return optimizers, [cfg.puzzle_emb_lr, cfg.lr]


def compute_lr(base_lr: float, cfg: TrainConfig, train_state: TrainState):
    return cosine_schedule_with_warmup_lr_lambda(current_step=train_state.step, base_lr=base_lr, num_warmup_steps=round(cfg.lr_warmup_steps),
                                                 num_training_steps=train_state.total_steps, min_ratio=cfg.lr_min_ratio)


def train_batch(cfg: TrainConfig, train_state: TrainState, batch: Dict[str, torch.Tensor], global_batch_size: int):
    """pretrain.train_batch for world_size 1; returns (metrics, outputs, lr) for the fixtures."""
    train_state.step += 1
    if train_state.step > train_state.total_steps:
        return None
    if train_state.carry is None:
        train_state.carry = train_state.model.initial_carry(batch)
    train_state.carry, loss, metrics, outputs, _ = train_state.model(
        carry=train_state.carry, batch=batch, return_keys=["logits", "q_halt_logits", "q_continue_logits", "target_q_continue", "seq_is_correct"])
    ((1 / global_batch_size) * loss).backward()
    lr_this_step = None
    for optim, base_lr in zip(train_state.optimizers, train_state.optimizer_lrs):
        lr_this_step = compute_lr(base_lr, cfg, train_state)
        for param_group in optim.param_groups:
            param_group['lr'] = lr_this_step
        optim.step()
        optim.zero_grad()
    return metrics, outputs, lr_this_step


# ==============================================================================================
# Fixture generation
# ==============================================================================================
CONFIG_KEYS = ["hidden_size", "num_heads", "expansion", "H_layers", "L_layers", "H_cycles", "L_cycles", "halt_max_steps",
               "halt_exploration_prob", "puzzle_emb_ndim", "vocab_size", "seq_len", "num_puzzle_identifiers", "rope_theta",
               "rms_norm_eps", "pos_encodings"]

FIXTURE_CONFIGS = {
    "tiny": dict(
        config=dict(hidden_size=64, num_heads=4, expansion=4, H_layers=2, L_layers=2, H_cycles=2, L_cycles=2, halt_max_steps=16,
                    halt_exploration_prob=0.1, puzzle_emb_ndim=64, vocab_size=11, seq_len=81, num_puzzle_identifiers=3,
                    rope_theta=10000.0, rms_norm_eps=1e-5, pos_encodings="rope"),
        B=8, n_long=16, puzzle_ids=[[0, 1, 2, 0, 2, 1, 1, 0], [2, 0, 1, 1, 0, 2, 0, 2], [1, 2, 0, 2, 1, 0, 1, 0]],
        init_seed=1234, data_seed=7),
    "tiny_pad": dict(
        config=dict(hidden_size=32, num_heads=2, expansion=4, H_layers=1, L_layers=2, H_cycles=3, L_cycles=2, halt_max_steps=4,
                    halt_exploration_prob=0.1, puzzle_emb_ndim=40, vocab_size=11, seq_len=81, num_puzzle_identifiers=2,
                    rope_theta=10000.0, rms_norm_eps=1e-5, pos_encodings="learned"),
        B=5, n_long=6, puzzle_ids=[[0, 1, 1, 0, 1], [1, 0, 0, 1, 1], [0, 0, 1, 1, 0]],
        init_seed=4321, data_seed=11),
}

ADAM_HP = dict(lr=1e-3, beta1=0.9, beta2=0.95, weight_decay=0.1, puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1)
TRAIN3_HP = dict(lr=1e-3, lr_warmup_steps=2, lr_min_ratio=1.0, beta1=0.9, beta2=0.95, weight_decay=0.1,
                 puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1, total_steps=3, halt_exploration_prob=0.0)


def model_config_dict(cfg: dict, batch_size: int, forward_dtype: str = "float32") -> dict:
    d = dict(cfg)
    d.update(batch_size=batch_size, forward_dtype=forward_dtype)
    return d


def build_model(cfg: dict, batch_size: int, forward_dtype: str = "float32") -> ACTLossHead:
    return ACTLossHead(HierarchicalReasoningModel_ACTV1(model_config_dict(cfg, batch_size, forward_dtype)), "stablemax_cross_entropy")


def expected_state_dict_keys(cfg: dict) -> List[str]:
    keys = ["model.inner.embed_tokens.embedding_weight", "model.inner.lm_head.weight", "model.inner.q_head.weight", "model.inner.q_head.bias"]
    if cfg["puzzle_emb_ndim"] > 0:
        keys.append("model.inner.puzzle_emb.weights")
    if cfg["pos_encodings"] == "learned":
        keys.append("model.inner.embed_pos.embedding_weight")
    for level, n in (("H_level", cfg["H_layers"]), ("L_level", cfg["L_layers"])):
        for i in range(n):
            for sub in ("self_attn.qkv_proj.weight", "self_attn.o_proj.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight"):
                keys.append(f"model.inner.{level}.layers.{i}.{sub}")
    keys += ["model.inner.H_init", "model.inner.L_init"]
    return keys


# ---- sudoku data ------------------------------------------------------------------------------
def _solved_grid(rng: np.random.Generator) -> np.ndarray:
    """A valid solved sudoku (digits 1..9): base pattern + the shuffle_sudoku transform."""
    base = np.array([[(r * 3 + r // 3 + c) % 9 + 1 for c in range(9)] for r in range(9)], dtype=np.int64)
    digit_map = np.pad(rng.permutation(np.arange(1, 10)), (1, 0))
    if rng.random() < 0.5:
        base = base.T
    bands = rng.permutation(3)
    row_perm = np.concatenate([b * 3 + rng.permutation(3) for b in bands])
    stacks = rng.permutation(3)
    col_perm = np.concatenate([s_ * 3 + rng.permutation(3) for s_ in stacks])
    mapping = np.array([row_perm[i // 9] * 9 + col_perm[i % 9] for i in range(81)])
    g = digit_map[base.flatten()[mapping]].reshape(9, 9)
    for k in range(9):  # validity
        assert sorted(g[k]) == list(range(1, 10)) and sorted(g[:, k]) == list(range(1, 10))
        br, bc = 3 * (k // 3), 3 * (k % 3)
        assert sorted(g[br:br + 3, bc:bc + 3].flatten()) == list(range(1, 10))
    return g


def make_sudoku_batch(rng: np.random.Generator, B: int, n_grids: int = 3) -> Tuple[np.ndarray, np.ndarray]:
    """inputs/labels as stored by build_sudoku_dataset.py: tokens 1 = blank, 2..10 = digits 1..9."""
    grids = [_solved_grid(rng) for _ in range(n_grids)]
    inputs = np.zeros((B, 81), dtype=np.int32)
    labels = np.zeros((B, 81), dtype=np.int32)
    for b in range(B):
        sol = grids[b % n_grids].flatten()
        n_blank = int(rng.integers(36, 45))
        blanks = rng.choice(81, size=n_blank, replace=False)
        q = sol.copy()
        q[blanks] = 0
        inputs[b] = q + 1
        labels[b] = sol + 1
    return inputs, labels


def to_model_batch(inputs: np.ndarray, labels: np.ndarray, pids: np.ndarray) -> Dict[str, torch.Tensor]:
    """puzzle_dataset._collate_batch: int32, labels == ignore_label_id (0) -> IGNORE_LABEL_ID (-100)."""
    lab = labels.astype(np.int32).copy()
    lab[lab == 0] = IGNORE_LABEL_ID
    return {"inputs": torch.from_numpy(inputs.astype(np.int32)), "labels": torch.from_numpy(lab),
            "puzzle_identifiers": torch.from_numpy(pids.astype(np.int32))}


# ---- helpers ------------------------------------------------------------------------------------
def u8(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.uint8).contiguous()


def f32(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.tensor(x)
    return x.detach().to(torch.float32).contiguous()


def save(path: str, tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, str]] = None):
    from safetensors.torch import save_file
    out = {}
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        assert v.dtype in (torch.float32, torch.int32, torch.uint8), (k, v.dtype)
        out[k] = v
    save_file(out, path, metadata=metadata)


def state_dict_f32(model: nn.Module, prefix: str = "") -> Dict[str, torch.Tensor]:
    return {prefix + k: v.detach().clone().to(torch.float32) for k, v in model.state_dict().items()}


def first_segment_train(model: ACTLossHead, batch: Dict[str, torch.Tensor]):
    """One training-mode segment from a fresh carry, no grad (used to choose labels / q_head)."""
    model.train()
    with torch.no_grad():
        carry = model.initial_carry(batch)
        carry, outputs = model.model(carry=carry, batch=batch)
    return carry, outputs


def run_eval(model: ACTLossHead, batch: Dict[str, torch.Tensor], n_segments: int):
    model.eval()
    exact, qh = [], []
    with torch.no_grad():
        carry = model.initial_carry(batch)
        for _ in range(n_segments):
            carry, _loss, _metrics, preds, _all_finish = model(carry=carry, batch=batch, return_keys=["logits", "q_halt_logits", "q_continue_logits"])
            labels = carry.current_data["labels"]
            mask = labels != IGNORE_LABEL_ID
            correct = (mask & (preds["logits"].argmax(-1) == labels)).sum(-1) == mask.sum(-1)
            exact.append(correct)
            qh.append(preds["q_halt_logits"])
    return carry, preds, torch.stack(exact), torch.stack(qh)


def train_step_grads(model: ACTLossHead, batch: Dict[str, torch.Tensor], B: int):
    """Official single training step (fresh carry) up to backward; returns carry, loss, metrics, outputs, grads."""
    model.train()
    model.zero_grad(set_to_none=True)
    model.model.inner.puzzle_emb.local_weights.grad = None
    carry = model.initial_carry(batch)
    carry, loss, metrics, outputs = model(carry=carry, batch=batch, return_keys=["logits", "q_halt_logits", "q_continue_logits", "target_q_continue", "seq_is_correct"])[:4]
    ((1 / B) * loss).backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
    grads["model.inner.puzzle_emb.weights"] = dense_puzzle_emb_grad(model.model.inner.puzzle_emb)
    return carry, loss, metrics, outputs, grads


# ---- finite-difference check -------------------------------------------------------------------
def _frozen_one_step_loss(model: ACTLossHead, z_H0, z_L0, batch, seq_is_correct, target_q, B):
    """The loss as autograd sees it: the no-grad prefix (z_H0, z_L0), seq_is_correct and the Q target are constants."""
    inner = model.model.inner
    seq_info = inner.seq_info()
    x = inner._input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    z_L = inner.L_level(z_L0, z_H0 + x, **seq_info)
    z_H = inner.H_level(z_H0, z_L, **seq_info)
    logits = inner.lm_head(z_H)[:, inner.puzzle_emb_len:]
    q = inner.q_head(z_H[:, 0])
    labels = batch["labels"]
    div = (labels != IGNORE_LABEL_ID).sum(-1).clamp_min(1).unsqueeze(-1)
    lm = (stablemax_cross_entropy(logits, labels) / div).sum()
    qh = F.binary_cross_entropy_with_logits(q[..., 0], seq_is_correct.to(q.dtype), reduction="sum")
    qc = F.binary_cross_entropy_with_logits(q[..., 1], target_q.to(q.dtype), reduction="sum")
    return (lm + 0.5 * (qh + qc)) / B


def _nograd_prefix(model: ACTLossHead, batch):
    inner = model.model.inner
    B = batch["inputs"].shape[0]
    seq_info = inner.seq_info()
    with torch.no_grad():
        carry = inner.reset_carry(torch.ones(B, dtype=torch.bool), inner.empty_carry(B))
        x = inner._input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        z_H, z_L = carry.z_H, carry.z_L
        for h in range(inner.config.H_cycles):
            for l in range(inner.config.L_cycles):
                if not (h == inner.config.H_cycles - 1 and l == inner.config.L_cycles - 1):
                    z_L = inner.L_level(z_L, z_H + x, **seq_info)
            if h != inner.config.H_cycles - 1:
                z_H = inner.H_level(z_H, z_L, **seq_info)
    return z_H, z_L


def fd_check_frozen(m64, batch: Dict[str, torch.Tensor], B: int, grads32: Dict[str, torch.Tensor], log, nograd_prefix, frozen_loss,
                    names: List[str], agree_relative: bool) -> Dict[str, float]:
    """The finite-difference check of a model's gradient-carrying part, shared by HRM and TRM.

    `m64`: the fixture's model in float64 (exploration off). `nograd_prefix(m64, batch)` gives
    the carry before the gradient-carrying updates; `frozen_loss(m64, z_H0, z_L0, batch, out64)`
    is the loss as autograd sees it from there (the no-grad prefix and the targets in `out64`
    constants). Checks: the official path in float64 against the float32 fixture gradients
    (logged), the frozen loss's autograd against the official path's (to 1e-12: absolute, or
    relative to each tensor's largest gradient with `agree_relative`), and central finite
    differences of the frozen loss on 3 entries of each tensor in `names` (the largest and 2
    random; to 1e-6 of the tensor's largest gradient)."""
    # 1) official path in float64 vs the float32 fixture grads
    _c, _l, _m, out64, g64 = train_step_grads(m64, batch, B)
    worst = 0.0
    for n, g in grads32.items():
        ref = g64[n]
        rel = float((g.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
        worst = max(worst, rel)
    log(f"  f32 vs f64 grads: worst max-abs-err / max-abs = {worst:.2e}")
    # 2) the frozen loss reproduces the official path (value and autograd)
    z_H0, z_L0 = nograd_prefix(m64, batch)
    m64.train()
    params = dict(m64.named_parameters())
    emb = m64.model.inner.puzzle_emb
    m64.zero_grad(set_to_none=True)
    emb.local_weights.grad = None
    frozen_loss(m64, z_H0, z_L0, batch, out64).backward()
    ga = {n: p.grad.detach().clone() for n, p in params.items()}
    ga["model.inner.puzzle_emb.weights"] = dense_puzzle_emb_grad(emb)
    if agree_relative:
        # relative to each tensor's largest gradient: a deep recursion has large gradients in f64
        agree = max(float((ga[n] - g64[n]).abs().max() / g64[n].abs().max().clamp_min(1e-30)) for n in ga)
        log(f"  frozen-loss autograd vs official-path autograd (f64): max |diff| / max |g| {agree:.2e}")
    else:
        agree = max(float((ga[n] - g64[n]).abs().max()) for n in ga)
        log(f"  frozen-loss autograd vs official-path autograd (f64): max abs diff {agree:.2e}")
    assert agree < 1e-12
    # 3) central finite differences
    gen = torch.Generator().manual_seed(0)
    eps = 1e-6
    worst_fd = 0.0
    n_checked = 0
    for n in names:
        tensor = emb.weights if n == "model.inner.puzzle_emb.weights" else params[n]
        g = ga[n]
        flat = g.abs().flatten()
        picks = [int(flat.argmax())] + [int(i) for i in torch.randint(0, flat.numel(), (2,), generator=gen)]
        for idx in picks:
            with torch.no_grad():
                orig = tensor.view(-1)[idx].item()
                tensor.view(-1)[idx] = orig + eps
                lp = float(frozen_loss(m64, z_H0, z_L0, batch, out64))
                tensor.view(-1)[idx] = orig - eps
                lm_ = float(frozen_loss(m64, z_H0, z_L0, batch, out64))
                tensor.view(-1)[idx] = orig
            fd = (lp - lm_) / (2 * eps)
            an = float(g.view(-1)[idx])
            # error relative to the largest |grad| of that tensor (FD noise is absolute, ~1e-10)
            err = abs(fd - an) / max(float(flat.max()), 1e-12)
            worst_fd = max(worst_fd, err)
            n_checked += 1
            log(f"  FD {n}[{idx}]: autograd {an:+.9e}  fd {fd:+.9e}  |diff|/max|g| {err:.1e}")
    log(f"  FD: {n_checked} entries, worst |fd-autograd|/max|g| {worst_fd:.2e}")
    assert worst_fd < 1e-6, worst_fd
    return dict(f32_vs_f64=worst, fd_worst=worst_fd)


def build_model_f64(build, cfg: dict, state: Dict[str, torch.Tensor], B: int):
    """`build(cfg, B, "float64")` with float64 parameters, the fixture's weights and exploration off."""
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        m64 = build(cfg, B, "float64")
    finally:
        torch.set_default_dtype(prev)
    m64.model.config.halt_exploration_prob = 0.0
    m64.load_state_dict(state)
    return m64


def fd_check(cfg: dict, state: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor], B: int, grads32: Dict[str, torch.Tensor], log) -> Dict[str, float]:
    names = ["model.inner.lm_head.weight", "model.inner.q_head.weight", "model.inner.q_head.bias", "model.inner.embed_tokens.embedding_weight",
             "model.inner.H_level.layers.0.self_attn.qkv_proj.weight", "model.inner.H_level.layers.0.self_attn.o_proj.weight",
             "model.inner.L_level.layers.1.mlp.gate_up_proj.weight", "model.inner.L_level.layers.0.mlp.down_proj.weight",
             "model.inner.puzzle_emb.weights"]
    if cfg["pos_encodings"] == "learned":
        names.append("model.inner.embed_pos.embedding_weight")

    def frozen(m, z_H0, z_L0, b, out64):
        return _frozen_one_step_loss(m, z_H0, z_L0, b, out64["seq_is_correct"], out64["target_q_continue"], B)

    return fd_check_frozen(build_model_f64(build_model, cfg, state, B), batch, B, grads32, log, _nograd_prefix, frozen, names,
                           agree_relative=False)


# ---- main fixture writer ---------------------------------------------------------------------------
def generate(name: str, out_root: str, log, do_fd: bool = True):
    spec = FIXTURE_CONFIGS[name]
    cfg, B = spec["config"], spec["B"]
    out_dir = os.path.join(out_root, name)
    os.makedirs(out_dir, exist_ok=True)
    log(f"== {name}: B={B}")

    # --- model: official init (seeded), then made non-trivial
    torch.manual_seed(spec["init_seed"])
    model = build_model(cfg, B)
    keys = list(model.state_dict().keys())
    exp = expected_state_dict_keys(cfg)
    assert sorted(keys) == sorted(exp), (set(keys) ^ set(exp))
    g = torch.Generator().manual_seed(spec["init_seed"] + 1)
    with torch.no_grad():
        pe = model.model.inner.puzzle_emb.weights
        pe.copy_(torch.randn(pe.shape, generator=g) * 0.5)

    # --- data
    rng = np.random.default_rng(spec["data_seed"])
    raw = [make_sudoku_batch(rng, B) for _ in range(3)]
    pids = [np.array(p, dtype=np.int32) for p in spec["puzzle_ids"]]
    inputs1, labels1 = raw[0]

    # labels: row 0 = first-segment prediction (seq_is_correct branch); row 1 has 5 PAD labels (ignored)
    batch_tmp = to_model_batch(inputs1, labels1, pids[0])
    _c, out = first_segment_train(model, batch_tmp)
    pred = out["logits"].argmax(-1).to(torch.int32).numpy()
    correct_row, pad_row = 0, 1
    labels1 = labels1.copy()
    labels1[correct_row] = pred[correct_row]
    pad_pos = np.random.default_rng(spec["data_seed"] + 100).choice(81, size=5, replace=False)
    labels1[pad_row, pad_pos] = 0
    raw[0] = (inputs1, labels1)
    batch = to_model_batch(inputs1, labels1, pids[0])

    # q_head: N(0, 0.05^2) weight, bias [+0.3, -0.3]; redraw until step 1 halts some rows but not all
    base_state = copy.deepcopy(model.state_dict())
    for attempt in range(100):
        gq = torch.Generator().manual_seed(spec["init_seed"] + 1000 + attempt)
        with torch.no_grad():
            model.model.inner.q_head.weight.copy_(torch.randn(model.model.inner.q_head.weight.shape, generator=gq) * 0.05)
            model.model.inner.q_head.bias.copy_(torch.tensor([0.3, -0.3]))
        _c, out = first_segment_train(model, batch)
        halted = (out["q_halt_logits"] > out["q_continue_logits"])
        n_h = int(halted.sum())
        if 1 <= n_h <= B - 1:
            break
    else:
        raise RuntimeError("could not find a q_head init with mixed halting")
    log(f"  q_head attempt {attempt}: step-1 halted = {halted.to(torch.int32).tolist()}")
    del base_state

    init_state = copy.deepcopy(model.state_dict())
    cfg_json = json.dumps({k: cfg[k] for k in CONFIG_KEYS})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        f.write(json.dumps({k: cfg[k] for k in CONFIG_KEYS}, indent=2) + "\n")
    save(os.path.join(out_dir, "weights.safetensors"), state_dict_f32(model), metadata={"config": cfg_json, "torch": torch.__version__})
    save(os.path.join(out_dir, "batch.safetensors"),
         {"inputs": torch.from_numpy(inputs1), "puzzle_identifiers": torch.from_numpy(pids[0]), "labels": torch.from_numpy(labels1.astype(np.int32))},
         metadata={"labels": "0 = ignore (maps to IGNORE_LABEL_ID=-100 before the loss, as puzzle_dataset._collate_batch)",
                   "correct_row": str(correct_row), "pad_row": str(pad_row)})

    # --- 2. eval forwards
    for n_seg in (1, spec["n_long"]):
        model.load_state_dict(init_state)
        carry, preds, exact, qh = run_eval(model, batch, n_seg)
        save(os.path.join(out_dir, f"forward_{n_seg}.safetensors"), {
            "logits": f32(preds["logits"]), "q_halt_logits": f32(preds["q_halt_logits"]), "q_continue_logits": f32(preds["q_continue_logits"]),
            "z_H": f32(carry.inner_carry.z_H), "z_L": f32(carry.inner_carry.z_L),
            "exact_correct_per_segment": u8(exact), "q_halt_logits_per_segment": f32(qh),
            "steps": carry.steps.to(torch.int32), "halted": u8(carry.halted),
        }, metadata={"mode": "eval", "segments": str(n_seg)})
        log(f"  forward_{n_seg}: exact per segment (rows) = {exact.to(torch.int32).sum(1).tolist()}")
        if n_seg == 1:
            assert bool(exact[0, correct_row]), "correct row must be exactly correct on segment 1"

    # --- 3. grad
    model.load_state_dict(init_state)
    model.model.config.halt_exploration_prob = 0.0
    carry, loss, metrics, outputs, grads = train_step_grads(model, batch, B)
    assert bool(outputs["seq_is_correct"][correct_row])
    gt = {"lm_loss": f32(metrics["lm_loss"]), "q_halt_loss": f32(metrics["q_halt_loss"]), "q_continue_loss": f32(metrics["q_continue_loss"]),
          "loss": f32(loss), "target_q_continue": f32(outputs["target_q_continue"]), "q_halt_logits": f32(outputs["q_halt_logits"]),
          "q_continue_logits": f32(outputs["q_continue_logits"]), "halted": u8(carry.halted), "steps": carry.steps.to(torch.int32),
          "seq_is_correct": u8(outputs["seq_is_correct"]), "logits": f32(outputs["logits"])}
    for n, gr in grads.items():
        gt[n] = f32(gr)
    save(os.path.join(out_dir, "grad.safetensors"), gt, metadata={
        "mode": "train", "halt_exploration_prob": "0", "grad_of": "(lm_loss + 0.5*(q_halt_loss + q_continue_loss)) / B",
        "B": str(B), "puzzle_emb_grad": "local_weights.grad scatter-added per id, dense [num_puzzle_identifiers, puzzle_emb_ndim]"})
    log(f"  grad: lm_loss {float(metrics['lm_loss']):.6f} q_halt_loss {float(metrics['q_halt_loss']):.6f} "
        f"q_continue_loss {float(metrics['q_continue_loss']):.6f} halted {carry.halted.to(torch.int32).tolist()} "
        f"seq_is_correct {outputs['seq_is_correct'].to(torch.int32).tolist()}")

    # --- 4. adam step (grads still on the model)
    cfg_t = TrainConfig(lr=ADAM_HP["lr"], weight_decay=ADAM_HP["weight_decay"], beta1=ADAM_HP["beta1"], beta2=ADAM_HP["beta2"],
                        puzzle_emb_lr=ADAM_HP["puzzle_emb_lr"], puzzle_emb_weight_decay=ADAM_HP["puzzle_emb_weight_decay"])
    optims, lrs = make_optimizers(model, cfg_t)
    for o, lr in zip(optims, lrs):
        for pg in o.param_groups:
            pg["lr"] = lr
        o.step()
        o.zero_grad()
    save(os.path.join(out_dir, "adam_step.safetensors"), state_dict_f32(model), metadata={k: repr(v) for k, v in ADAM_HP.items()})

    # --- 5. three training steps with carry persistence
    model.load_state_dict(init_state)
    model.model.config.halt_exploration_prob = TRAIN3_HP["halt_exploration_prob"]
    cfg3 = TrainConfig(lr=TRAIN3_HP["lr"], lr_min_ratio=TRAIN3_HP["lr_min_ratio"], lr_warmup_steps=TRAIN3_HP["lr_warmup_steps"],
                       weight_decay=TRAIN3_HP["weight_decay"], beta1=TRAIN3_HP["beta1"], beta2=TRAIN3_HP["beta2"],
                       puzzle_emb_lr=TRAIN3_HP["puzzle_emb_lr"], puzzle_emb_weight_decay=TRAIN3_HP["puzzle_emb_weight_decay"])
    model.train()
    optims, lrs = make_optimizers(model, cfg3)
    ts = TrainState(model=model, optimizers=optims, optimizer_lrs=lrs, carry=None, step=0, total_steps=TRAIN3_HP["total_steps"])
    batches = [batch] + [to_model_batch(raw[k][0], raw[k][1], pids[k]) for k in (1, 2)]
    t3 = {}
    for k in range(3):
        metrics_k, out_k, lr_k = train_batch(cfg3, ts, batches[k], global_batch_size=B)
        c = ts.carry
        t3[f"step{k+1}.lm_loss"] = f32(metrics_k["lm_loss"])
        t3[f"step{k+1}.q_halt_loss"] = f32(metrics_k["q_halt_loss"])
        t3[f"step{k+1}.q_continue_loss"] = f32(metrics_k["q_continue_loss"])
        t3[f"step{k+1}.halted"] = u8(c.halted)
        t3[f"step{k+1}.steps"] = c.steps.to(torch.int32)
        t3[f"step{k+1}.q_halt_logits"] = f32(out_k["q_halt_logits"])
        t3[f"step{k+1}.q_continue_logits"] = f32(out_k["q_continue_logits"])
        t3[f"step{k+1}.target_q_continue"] = f32(out_k["target_q_continue"])
        t3[f"step{k+1}.seq_is_correct"] = u8(out_k["seq_is_correct"])
        t3[f"step{k+1}.puzzle_identifiers"] = c.current_data["puzzle_identifiers"].to(torch.int32)
        t3[f"step{k+1}.lr"] = f32(lr_k)
        t3[f"step{k+1}.puzzle_emb_lr"] = f32(compute_lr(cfg3.puzzle_emb_lr, cfg3, ts))
        log(f"  train step {k+1}: lr {lr_k:g} lm {float(metrics_k['lm_loss']):.6f} qh {float(metrics_k['q_halt_loss']):.6f} "
            f"qc {float(metrics_k['q_continue_loss']):.6f} halted {c.halted.to(torch.int32).tolist()} steps {c.steps.tolist()}")
        if k == 0:
            assert abs(float(metrics_k["lm_loss"]) - float(gt["lm_loss"])) < 1e-5
    s1h = t3["step1.halted"].bool()
    assert s1h.any() and (~s1h).any(), "need rows that halt at step 1 and rows that continue"
    assert (t3["step2.steps"][s1h] == 1).all() and (t3["step2.steps"][~s1h] == 2).all()
    for n, v in state_dict_f32(model, "final.").items():
        t3[n] = v
    save(os.path.join(out_dir, "train_3.safetensors"), t3, metadata={k: repr(v) for k, v in TRAIN3_HP.items()} | {"global_batch_size": str(B)})
    save(os.path.join(out_dir, "train_3_batches.safetensors"), {
        "inputs": torch.from_numpy(np.stack([r[0] for r in raw]).astype(np.int32)),
        "puzzle_identifiers": torch.from_numpy(np.stack(pids).astype(np.int32)),
        "labels": torch.from_numpy(np.stack([r[1] for r in raw]).astype(np.int32))},
        metadata={"labels": "0 = ignore (maps to -100)"})

    # --- verification
    fd = None
    if do_fd:
        fd = fd_check(cfg, init_state, batch, B, grads, log)
    return fd


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "fixtures"))
    ap.add_argument("--configs", nargs="*", default=list(FIXTURE_CONFIGS))
    ap.add_argument("--no-fd", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    for name in args.configs:
        generate(name, os.path.abspath(args.out), log=print, do_fd=not args.no_fd)


if __name__ == "__main__":
    main()
