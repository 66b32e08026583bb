"""TRM (Tiny Recursive Model) reference in plain PyTorch, for the Rust port's fixtures.

Re-implements the official TRM code (github SamsungSAILMontreal/TinyRecursiveModels at e7b6871:
`models/recursive_reasoning/trm.py`, `models/losses.py`) on the HRM reference's shared pieces
(`hrm_reference.py`: layers, sparse embedding, stablemax, AdamATan2, data helpers), as
specified in the project's TRM_SPEC: one network `L_level` used for both updates, T-1
recursions without gradient and the last with full backpropagation through its n + 1 network
calls, the optional token-mixing SwiGLU across the sequence (`mlp_t`, normalized over the
sequence), a `puzzle_emb_len`-token prefix, halting on q_halt > 0 without a target-Q pass
(`no_ACT_continue`), loss lm + 0.5 q_halt. Forward dtype float32.

Writes, per fixture directory (`trm_mlp/`, `trm_att/`): config.json, weights.safetensors,
batch.safetensors, forward_1 / forward_N.safetensors (eval mode), grad.safetensors (one training
step from a fresh carry, exploration off), with the same tensor names as the HRM fixtures, and
checks the gradients by central finite differences in float64 through the whole last recursion.
"""
import argparse
import copy
import json
import os
from typing import Dict, List

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import hrm_reference as H
from hrm_reference import (IGNORE_LABEL_ID, Attention, CastedEmbedding, CastedLinear, CastedSparseEmbedding, RotaryEmbedding,
                           SwiGLU, dense_puzzle_emb_grad, f32, make_sudoku_batch, rms_norm, save, stablemax_cross_entropy,
                           state_dict_f32, to_model_batch, trunc_normal_init_, u8)


class TRMConfig(H.HierarchicalReasoningModel_ACTV1Config):
    FIELDS = dict(H.HierarchicalReasoningModel_ACTV1Config.FIELDS, mlp_t=False, puzzle_emb_len=16, no_ACT_continue=True)


def prefix_len(config) -> int:
    return -(config.puzzle_emb_ndim // -config.hidden_size) if config.puzzle_emb_len == 0 else config.puzzle_emb_len


class TRMBlock(nn.Module):
    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        self.config = config
        if config.mlp_t:
            # the token-mixing SwiGLU across the sequence (prefix + cells)
            self.mlp_t = SwiGLU(hidden_size=config.seq_len + prefix_len(config), expansion=config.expansion)
        else:
            self.self_attn = Attention(hidden_size=config.hidden_size, head_dim=config.hidden_size // config.num_heads,
                                       num_heads=config.num_heads, num_key_value_heads=config.num_heads, causal=False)
        self.mlp = SwiGLU(hidden_size=config.hidden_size, expansion=config.expansion)
        self.norm_eps = config.rms_norm_eps

    def forward(self, cos_sin, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.config.mlp_t:
            hidden_states = hidden_states.transpose(1, 2)
            out = self.mlp_t(hidden_states)
            hidden_states = rms_norm(hidden_states + out, variance_epsilon=self.norm_eps)
            hidden_states = hidden_states.transpose(1, 2)
        else:
            hidden_states = rms_norm(hidden_states + self.self_attn(cos_sin=cos_sin, hidden_states=hidden_states), variance_epsilon=self.norm_eps)
        out = self.mlp(hidden_states)
        return rms_norm(hidden_states + out, variance_epsilon=self.norm_eps)


class TRMInner(nn.Module):
    def __init__(self, config: TRMConfig) -> None:
        super().__init__()
        self.config = config
        self.forward_dtype = getattr(torch, config.forward_dtype)
        self.embed_scale = config.hidden_size ** 0.5
        embed_init_std = 1.0 / self.embed_scale
        self.embed_tokens = CastedEmbedding(config.vocab_size, config.hidden_size, init_std=embed_init_std, cast_to=self.forward_dtype)
        self.lm_head = CastedLinear(config.hidden_size, config.vocab_size, bias=False)
        self.q_head = CastedLinear(config.hidden_size, 2, bias=True)
        self.puzzle_emb_len = prefix_len(config)
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = CastedSparseEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim, batch_size=config.batch_size,
                                                    init_std=0, cast_to=self.forward_dtype, device='cpu')
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(dim=config.hidden_size // config.num_heads,
                                              max_position_embeddings=config.seq_len + self.puzzle_emb_len, base=config.rope_theta,
                                              dtype=H._math_dtype(self.forward_dtype))
        elif config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(config.seq_len + self.puzzle_emb_len, config.hidden_size, init_std=embed_init_std,
                                             cast_to=self.forward_dtype)
        self.L_level = H.HierarchicalReasoningModel_ACTV1ReasoningModule(layers=[TRMBlock(config) for _ in range(config.L_layers)])
        self.H_init = nn.Buffer(trunc_normal_init_(torch.empty(config.hidden_size, dtype=self.forward_dtype), std=1), persistent=True)
        self.L_init = nn.Buffer(trunc_normal_init_(torch.empty(config.hidden_size, dtype=self.forward_dtype), std=1), persistent=True)
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)  # type: ignore

    # identical to HRM's with this prefix length
    _input_embeddings = H.HierarchicalReasoningModel_ACTV1_Inner._input_embeddings
    empty_carry = H.HierarchicalReasoningModel_ACTV1_Inner.empty_carry
    reset_carry = H.HierarchicalReasoningModel_ACTV1_Inner.reset_carry
    seq_info = H.HierarchicalReasoningModel_ACTV1_Inner.seq_info

    def recursion(self, z_H, z_L, x, seq_info):
        for _L_step in range(self.config.L_cycles):
            z_L = self.L_level(z_L, z_H + x, **seq_info)
        z_H = self.L_level(z_H, z_L, **seq_info)
        return z_H, z_L

    def forward(self, carry, batch: Dict[str, torch.Tensor]):
        seq_info = self.seq_info()
        x = self._input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        z_H, z_L = carry.z_H, carry.z_L
        with torch.no_grad():
            for _H_step in range(self.config.H_cycles - 1):
                z_H, z_L = self.recursion(z_H, z_L, x, seq_info)
        z_H, z_L = self.recursion(z_H, z_L, x, seq_info)  # with gradient: the whole last recursion
        new_carry = H.HierarchicalReasoningModel_ACTV1InnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
        output = self.lm_head(z_H)[:, self.puzzle_emb_len:]
        q_logits = self.q_head(z_H[:, 0]).to(H._math_dtype(self.forward_dtype))
        return new_carry, output, (q_logits[..., 0], q_logits[..., 1])


class TRM(nn.Module):
    """ACT wrapper (TinyRecursiveReasoningModel_ACTV1)."""

    def __init__(self, config_dict: dict):
        super().__init__()
        self.config = TRMConfig(**config_dict)
        self.inner = TRMInner(self.config)

    puzzle_emb = H.HierarchicalReasoningModel_ACTV1.puzzle_emb
    initial_carry = H.HierarchicalReasoningModel_ACTV1.initial_carry

    def forward(self, carry, batch: Dict[str, torch.Tensor]):
        new_inner_carry = self.inner.reset_carry(carry.halted, carry.inner_carry)
        new_steps = torch.where(carry.halted, 0, carry.steps)
        new_current_data = {k: torch.where(carry.halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
                            for k, v in carry.current_data.items()}
        new_inner_carry, logits, (q_halt_logits, q_continue_logits) = self.inner(new_inner_carry, new_current_data)
        outputs = {"logits": logits, "q_halt_logits": q_halt_logits, "q_continue_logits": q_continue_logits}
        with torch.no_grad():
            new_steps = new_steps + 1
            is_last_step = new_steps >= self.config.halt_max_steps
            halted = is_last_step
            if self.training and (self.config.halt_max_steps > 1):
                if self.config.no_ACT_continue:
                    halted = halted | (q_halt_logits > 0)
                else:
                    halted = halted | (q_halt_logits > q_continue_logits)
                min_halt_steps = (torch.rand_like(q_halt_logits) < self.config.halt_exploration_prob) * \
                    torch.randint_like(new_steps, low=2, high=self.config.halt_max_steps + 1)
                halted = halted & (new_steps >= min_halt_steps)
                if not self.config.no_ACT_continue:
                    raise NotImplementedError("no_ACT_continue=False (crashes in the official snapshot, TRM_SPEC 9.7)")
        return H.HierarchicalReasoningModel_ACTV1Carry(new_inner_carry, new_steps, halted, new_current_data), outputs


# ==============================================================================================
# Fixtures
# ==============================================================================================
CONFIG_KEYS = H.CONFIG_KEYS + ["arch", "mlp_t", "puzzle_emb_len", "no_ACT_continue"]

FIXTURE_CONFIGS = {
    # The Sudoku-MLP shape at a small width: S = 16 + 81 = 97, token-MLP width 512, no positions.
    "trm_mlp": dict(
        config=dict(hidden_size=32, num_heads=2, expansion=4, H_layers=1, L_layers=2, H_cycles=2, L_cycles=3, halt_max_steps=6,
                    halt_exploration_prob=0.1, puzzle_emb_ndim=32, vocab_size=11, seq_len=81, num_puzzle_identifiers=3,
                    rope_theta=10000.0, rms_norm_eps=1e-5, pos_encodings="none", arch="trm", mlp_t=True, puzzle_emb_len=16,
                    no_ACT_continue=True),
        B=6, n_long=2, puzzle_ids=[0, 2, 1, 1, 0, 2], init_seed=2024, data_seed=5),
    # Attention with RoPE; a 3-token prefix holding an 80-wide embedding (2 positions used, 1 zero).
    "trm_att": dict(
        config=dict(hidden_size=64, num_heads=4, expansion=4, H_layers=1, L_layers=2, H_cycles=3, L_cycles=2, halt_max_steps=16,
                    halt_exploration_prob=0.1, puzzle_emb_ndim=80, vocab_size=11, seq_len=81, num_puzzle_identifiers=2,
                    rope_theta=10000.0, rms_norm_eps=1e-5, pos_encodings="rope", arch="trm", mlp_t=False, puzzle_emb_len=3,
                    no_ACT_continue=True),
        B=8, n_long=6, puzzle_ids=[0, 1, 1, 0, 1, 0, 0, 1], init_seed=2025, data_seed=9),
}


def build_model(cfg: dict, batch_size: int, forward_dtype: str = "float32") -> H.ACTLossHead:
    d = {k: v for k, v in cfg.items() if k != "arch"}
    d.update(batch_size=batch_size, forward_dtype=forward_dtype)
    return H.ACTLossHead(TRM(d), "stablemax_cross_entropy")


def expected_state_dict_keys(cfg: dict) -> List[str]:
    keys = ["model.inner.embed_tokens.embedding_weight", "model.inner.lm_head.weight", "model.inner.q_head.weight", "model.inner.q_head.bias"]
    if cfg["puzzle_emb_ndim"] > 0:
        keys.append("model.inner.puzzle_emb.weights")
    if cfg["pos_encodings"] == "learned":
        keys.append("model.inner.embed_pos.embedding_weight")
    mixer = ("mlp_t.gate_up_proj.weight", "mlp_t.down_proj.weight") if cfg["mlp_t"] else ("self_attn.qkv_proj.weight", "self_attn.o_proj.weight")
    for i in range(cfg["L_layers"]):
        for sub in mixer + ("mlp.gate_up_proj.weight", "mlp.down_proj.weight"):
            keys.append(f"model.inner.L_level.layers.{i}.{sub}")
    return keys + ["model.inner.H_init", "model.inner.L_init"]


def frozen_last_recursion_loss(model, z_H0, z_L0, batch, seq_is_correct, B):
    """The loss as autograd sees it: the T-1 no-grad recursions (z_H0, z_L0) and seq_is_correct are constants."""
    inner = model.model.inner
    x = inner._input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
    z_H, _ = inner.recursion(z_H0, z_L0, x, inner.seq_info())
    logits = inner.lm_head(z_H)[:, inner.puzzle_emb_len:]
    q = inner.q_head(z_H[:, 0])
    labels = batch["labels"]
    div = (labels != IGNORE_LABEL_ID).sum(-1).clamp_min(1).unsqueeze(-1)
    lm = (stablemax_cross_entropy(logits, labels) / div).sum()
    qh = F.binary_cross_entropy_with_logits(q[..., 0], seq_is_correct.to(q.dtype), reduction="sum")
    return (lm + 0.5 * qh) / B


def nograd_prefix(model, batch):
    inner = model.model.inner
    B = batch["inputs"].shape[0]
    with torch.no_grad():
        carry = inner.reset_carry(torch.ones(B, dtype=torch.bool), inner.empty_carry(B))
        x = inner._input_embeddings(batch["inputs"], batch["puzzle_identifiers"])
        z_H, z_L = carry.z_H, carry.z_L
        for _ in range(inner.config.H_cycles - 1):
            z_H, z_L = inner.recursion(z_H, z_L, x, inner.seq_info())
    return z_H, z_L


def fd_check(cfg, state, batch, B, grads32, log):
    mixer = ("mlp_t.gate_up_proj.weight", "mlp_t.down_proj.weight") if cfg["mlp_t"] else ("self_attn.qkv_proj.weight", "self_attn.o_proj.weight")
    names = ["model.inner.lm_head.weight", "model.inner.q_head.weight", "model.inner.q_head.bias", "model.inner.embed_tokens.embedding_weight",
             f"model.inner.L_level.layers.0.{mixer[0]}", f"model.inner.L_level.layers.1.{mixer[1]}",
             "model.inner.L_level.layers.1.mlp.gate_up_proj.weight", "model.inner.L_level.layers.0.mlp.down_proj.weight",
             "model.inner.puzzle_emb.weights"]

    def frozen(m, z_H0, z_L0, b, out64):
        return frozen_last_recursion_loss(m, z_H0, z_L0, b, out64["seq_is_correct"], B)

    return H.fd_check_frozen(H.build_model_f64(build_model, cfg, state, B), batch, B, grads32, log, nograd_prefix, frozen, names,
                             agree_relative=True)


def generate(name: str, out_root: str, log, do_fd: bool = True):
    spec = FIXTURE_CONFIGS[name]
    cfg, B = spec["config"], spec["B"]
    out_dir = os.path.join(out_root, name)
    os.makedirs(out_dir, exist_ok=True)
    log(f"== {name}: B={B}")
    torch.manual_seed(spec["init_seed"])
    model = build_model(cfg, B)
    keys = list(model.state_dict().keys())
    exp = expected_state_dict_keys(cfg)
    assert sorted(keys) == sorted(exp), (set(keys) ^ set(exp))
    g = torch.Generator().manual_seed(spec["init_seed"] + 1)
    with torch.no_grad():
        pe = model.model.inner.puzzle_emb.weights
        pe.copy_(torch.randn(pe.shape, generator=g) * 0.5)

    rng = np.random.default_rng(spec["data_seed"])
    inputs, labels = make_sudoku_batch(rng, B)
    pids = np.array(spec["puzzle_ids"], dtype=np.int32)
    # row 0 labelled with the model's own first-segment answer (the seq_is_correct branch);
    # row 1 with 5 ignored labels
    _c, out = H.first_segment_train(model, to_model_batch(inputs, labels, pids))
    labels = labels.copy()
    labels[0] = out["logits"].argmax(-1).to(torch.int32).numpy()[0]
    labels[1, np.random.default_rng(spec["data_seed"] + 100).choice(81, size=5, replace=False)] = 0
    batch = to_model_batch(inputs, labels, pids)

    # q_head: N(0, 0.05^2) weight, bias [0, -0.3]; redraw until q_halt > 0 halts some rows at
    # step 1 but not all
    for attempt in range(100):
        gq = torch.Generator().manual_seed(spec["init_seed"] + 1000 + attempt)
        with torch.no_grad():
            model.model.inner.q_head.weight.copy_(torch.randn(model.model.inner.q_head.weight.shape, generator=gq) * 0.05)
            model.model.inner.q_head.bias.copy_(torch.tensor([0.0, -0.3]))
        _c, out = H.first_segment_train(model, batch)
        n_h = int((out["q_halt_logits"] > 0).sum())
        if 1 <= n_h <= B - 1:
            break
    else:
        raise RuntimeError("could not find a q_head init with mixed halting")
    log(f"  q_head attempt {attempt}: step-1 halted = {(out['q_halt_logits'] > 0).to(torch.int32).tolist()}")

    init_state = copy.deepcopy(model.state_dict())
    cfg_json = json.dumps({k: cfg[k] for k in CONFIG_KEYS})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        f.write(json.dumps({k: cfg[k] for k in CONFIG_KEYS}, indent=2) + "\n")
    save(os.path.join(out_dir, "weights.safetensors"), state_dict_f32(model), metadata={"config": cfg_json, "torch": torch.__version__})
    save(os.path.join(out_dir, "batch.safetensors"),
         {"inputs": torch.from_numpy(inputs), "puzzle_identifiers": torch.from_numpy(pids), "labels": torch.from_numpy(labels.astype(np.int32))},
         metadata={"labels": "0 = ignore (maps to IGNORE_LABEL_ID=-100 before the loss)", "correct_row": "0", "pad_row": "1"})

    for n_seg in (1, spec["n_long"]):
        model.load_state_dict(init_state)
        carry, preds, exact, qh = H.run_eval(model, batch, n_seg)
        save(os.path.join(out_dir, f"forward_{n_seg}.safetensors"), {
            "logits": f32(preds["logits"]), "q_halt_logits": f32(preds["q_halt_logits"]), "q_continue_logits": f32(preds["q_continue_logits"]),
            "z_H": f32(carry.inner_carry.z_H), "z_L": f32(carry.inner_carry.z_L),
            "exact_correct_per_segment": u8(exact), "q_halt_logits_per_segment": f32(qh),
            "steps": carry.steps.to(torch.int32), "halted": u8(carry.halted),
        }, metadata={"mode": "eval", "segments": str(n_seg)})
        log(f"  forward_{n_seg}: exact per segment (rows) = {exact.to(torch.int32).sum(1).tolist()}")
        if n_seg == 1:
            assert bool(exact[0, 0]), "row 0 must be exactly right on segment 1"

    model.load_state_dict(init_state)
    model.model.config.halt_exploration_prob = 0.0
    carry, loss, metrics, outputs, grads = H.train_step_grads(model, batch, B)
    assert bool(outputs["seq_is_correct"][0]) and "target_q_continue" not in outputs
    gt = {"lm_loss": f32(metrics["lm_loss"]), "q_halt_loss": f32(metrics["q_halt_loss"]), "loss": f32(loss),
          "q_halt_logits": f32(outputs["q_halt_logits"]), "q_continue_logits": f32(outputs["q_continue_logits"]),
          "halted": u8(carry.halted), "steps": carry.steps.to(torch.int32), "seq_is_correct": u8(outputs["seq_is_correct"]),
          "logits": f32(outputs["logits"])}
    for n, gr in grads.items():
        gt[n] = f32(gr)
    save(os.path.join(out_dir, "grad.safetensors"), gt, metadata={
        "mode": "train", "halt_exploration_prob": "0", "grad_of": "(lm_loss + 0.5*q_halt_loss) / B", "B": str(B),
        "puzzle_emb_grad": "local_weights.grad scatter-added per id, dense [num_puzzle_identifiers, puzzle_emb_ndim]"})
    log(f"  grad: lm_loss {float(metrics['lm_loss']):.6f} q_halt_loss {float(metrics['q_halt_loss']):.6f} "
        f"halted {carry.halted.to(torch.int32).tolist()} seq_is_correct {outputs['seq_is_correct'].to(torch.int32).tolist()}")
    if do_fd:
        return fd_check(cfg, init_state, batch, B, grads, log)
    return None


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
