#!/usr/bin/env python3
"""Time one full HRM training step of the PyTorch reference on a CUDA GPU, as the official
code runs it: bf16 forward (forward_dtype=bfloat16), torch.compile, fused attention (the official
code calls flash_attn_func; here torch's scaled_dot_product_attention, whose flash backend is
the same algorithm). Sudoku config, B=768 by default.

One step = pretrain.train_batch: ACT segment (no-grad prefix + 1-step grad) + loss + target-Q
segment + backward + SignSGD and AdamATan2 (the reference's Python AdamATan2, not the
adam-atan2 CUDA extension: the optimizer part is slower than the official one).

    python3 tools/reference/bench_gpu.py [--batch 768] [--steps 20] [--no-compile]

Prints one line: median ms per step, tokens/s.
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import hrm_reference as ref  # noqa: E402

SUDOKU = dict(hidden_size=512, num_heads=8, expansion=4, H_layers=4, L_layers=4, H_cycles=2, L_cycles=2,
              halt_max_steps=16, halt_exploration_prob=0.1, puzzle_emb_ndim=512, vocab_size=11, seq_len=81,
              num_puzzle_identifiers=1, rope_theta=10000.0, rms_norm_eps=1e-5, pos_encodings="rope")


def sdpa_attention(q, k, v, causal=False):
    """flash_attn_func layout: [bs, seq, heads, head_dim]."""
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal)
    return o.transpose(1, 2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=768)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    assert torch.cuda.is_available(), "no CUDA device"
    torch.set_default_device("cuda")
    ref._attention_explicit = sdpa_attention
    torch.manual_seed(0)
    B = args.batch
    # .cuda() also moves the puzzle embedding's buffers, which the reference creates on the CPU.
    model = ref.build_model(SUDOKU, B, forward_dtype="bfloat16").cuda()
    tcfg = ref.TrainConfig(lr=1e-4, lr_warmup_steps=0, lr_min_ratio=1.0, weight_decay=1.0, beta1=0.9, beta2=0.95,
                           puzzle_emb_lr=1e-4, puzzle_emb_weight_decay=1.0)
    optims, lrs = ref.make_optimizers(model, tcfg)
    mode = "eager"
    if not args.no_compile:
        model = torch.compile(model)
        mode = "torch.compile"
    model.train()
    ts = ref.TrainState(model=model, optimizers=optims, optimizer_lrs=lrs, carry=None, step=0, total_steps=10 ** 9)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(4):
        inp, lab = ref.make_sudoku_batch(rng, B)
        pid = np.zeros(B, dtype=np.int32)
        batches.append({k: v.cuda() for k, v in ref.to_model_batch(inp, lab, pid).items()})
    times = []
    for i in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        ref.train_batch(tcfg, ts, batches[i % 4], global_batch_size=B)
        torch.cuda.synchronize()
        if i >= args.warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    med = statistics.median(times)
    print(f"pytorch reference ({mode}, bf16, SDPA attention) {torch.cuda.get_device_name()}: B={B} "
          f"median {med:.1f} ms/step (min {min(times):.1f}, max {max(times):.1f}), "
          f"{B * 82 / med * 1e3:.0f} tokens/s, torch {torch.__version__}", flush=True)


if __name__ == "__main__":
    main()
