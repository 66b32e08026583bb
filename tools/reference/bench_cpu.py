#!/usr/bin/env python3
"""Time the HRM and TRM PyTorch references on CPU (float32), eager and torch.compile:

- one full training step = pretrain.train_batch: ACT forward segment (no-grad prefix + 1-step
  grad) + loss + the target-Q segment + backward + SignSGD and AdamATan2 steps;
  (TRM, `trm_sudoku_mlp`: its segment with the last recursion's full gradient, no target-Q);
- inference as the official evaluate() runs it: eval mode, no grad, a fresh carry, then ACT
  segments until every row halts (halt_max_steps = 16 for the Sudoku config), in puzzles/s.

    tools/reference/.venv/bin/python tools/reference/bench_cpu.py [--modes eager compile]
        [--configs tiny full_sudoku trm_sudoku_mlp] [--no-infer] [--no-train]

The ours-side figures: `cargo bench --bench cpu_step` and `cargo bench --bench cpu_infer`.
"""
import argparse
import statistics
import time

import numpy as np
import torch

import hrm_reference as ref
import trm_reference as trm

CONFIGS = {
    "tiny": (dict(ref.FIXTURE_CONFIGS["tiny"]["config"]), 32, 20),
    "full_sudoku": (dict(hidden_size=512, num_heads=8, expansion=4, H_layers=4, L_layers=4, H_cycles=2, L_cycles=2,
                         halt_max_steps=16, halt_exploration_prob=0.1, puzzle_emb_ndim=512, vocab_size=11, seq_len=81,
                         num_puzzle_identifiers=1, rope_theta=10000.0, rms_norm_eps=1e-5, pos_encodings="rope"), 8, 5),
    # TRM_SPEC section 4's Sudoku-MLP model (5,028,866 trainable parameters); not in the default run
    "trm_sudoku_mlp": (dict(hidden_size=512, num_heads=8, expansion=4, H_layers=1, L_layers=2, H_cycles=3, L_cycles=6,
                            halt_max_steps=16, halt_exploration_prob=0.1, puzzle_emb_ndim=512, vocab_size=11, seq_len=81,
                            num_puzzle_identifiers=1, rope_theta=10000.0, rms_norm_eps=1e-5, pos_encodings="none",
                            arch="trm", mlp_t=True, puzzle_emb_len=16, no_ACT_continue=True), 8, 5),
}


def build(cfg, B):
    return trm.build_model(cfg, B) if cfg.get("arch") == "trm" else ref.build_model(cfg, B)


def bench(name, cfg, B, n_steps, mode, warmup=2):
    torch.manual_seed(0)
    model = build(cfg, B)
    n_params = sum(p.numel() for p in model.parameters())
    tcfg = ref.TrainConfig(lr=1e-4, lr_warmup_steps=0, lr_min_ratio=1.0, weight_decay=1.0, beta1=0.9, beta2=0.95,
                           puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1)
    optims, lrs = ref.make_optimizers(model, tcfg)
    if mode == "compile":
        model = torch.compile(model)
        warmup = max(warmup, 3)  # compilation happens in the first steps
    model.train()
    ts = ref.TrainState(model=model, optimizers=optims, optimizer_lrs=lrs, carry=None, step=0, total_steps=10 ** 9)
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(4):
        inp, lab = ref.make_sudoku_batch(rng, B)
        pid = rng.integers(0, cfg["num_puzzle_identifiers"], size=B).astype(np.int32)
        batches.append(ref.to_model_batch(inp, lab, pid))
    times, cpu = [], []
    for i in range(warmup + n_steps):
        t0, c0 = time.perf_counter(), time.process_time()
        ref.train_batch(tcfg, ts, batches[i % 4], global_batch_size=B)
        dt, dc = (time.perf_counter() - t0) * 1e3, (time.process_time() - c0) * 1e3
        if i >= warmup:
            times.append(dt)
            cpu.append(dc)
    print(f"train {name} ({mode}): B={B} params={n_params} steps={n_steps} wall median {statistics.median(times):.1f} ms "
          f"(min {min(times):.1f}, max {max(times):.1f}); process CPU median {statistics.median(cpu):.1f} ms; "
          f"loadavg {open('/proc/loadavg').read().split()[0]}", flush=True)
    return statistics.median(times)


def bench_infer(name, cfg, B, n_batches, mode, warmup=1):
    """Puzzles/s of evaluation: every batch runs until all rows halt (halt_max_steps segments)."""
    torch.manual_seed(0)
    model = ref.build_model(cfg, B)
    if mode == "compile":
        model = torch.compile(model)
        warmup = max(warmup, 2)
    model.eval()
    rng = np.random.default_rng(0)
    inp, lab = ref.make_sudoku_batch(rng, B)
    batch = ref.to_model_batch(inp, lab, np.zeros(B, dtype=np.int32))
    times, segs = [], 0
    for i in range(warmup + n_batches):
        t0 = time.perf_counter()
        with torch.inference_mode():
            carry = model.initial_carry(batch)
            segs = 0
            while True:
                carry, _, metrics, _, all_finish = model(carry=carry, batch=batch, return_keys=[])
                segs += 1
                if all_finish:
                    break
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    print(f"inference {name} ({mode}): B={B} segments={segs} batches={n_batches} wall median {med * 1e3:.1f} ms "
          f"per batch (min {min(times) * 1e3:.1f}, max {max(times) * 1e3:.1f}) = {B / med:.3f} puzzles/s; "
          f"loadavg {open('/proc/loadavg').read().split()[0]}", flush=True)
    return B / med


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="*", default=["tiny", "full_sudoku"], choices=list(CONFIGS))
    ap.add_argument("--modes", nargs="*", default=["eager", "compile"], choices=["eager", "compile"])
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-infer", action="store_true", help="skip the Sudoku-config inference figure")
    ap.add_argument("--infer-batches", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}", flush=True)
    for mode in args.modes:
        if not args.no_train:
            for name in args.configs:
                cfg, B, n = CONFIGS[name]
                bench(name, cfg, B, n, mode)
        if not args.no_infer:
            cfg, _, _ = CONFIGS["full_sudoku"]
            bench_infer("full_sudoku", cfg, 8, args.infer_batches, mode)


if __name__ == "__main__":
    main()
