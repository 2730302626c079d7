#!/usr/bin/env python3
"""Trains the same model as gsink-train in PyTorch (float32, CPU) on the same
batches with the same optimizer and schedule, and reports tokens/s and losses.

Used by docs/benchmarks-training.md to compare training throughput and, as a
sanity check, the loss curve of gsink-train with an independent implementation
(tests/reference/torch_llama.py).

  python examples/train/bench_torch.py --data .cache/corpus/docs --steps 100 \
      --d-model 128 --layers 4 --heads 4 --kv-heads 4 --d-head 32 --d-ff 344 \
      --batch 16 --seq 128 --lr 3e-3 --min-lr 3e-4 --warmup 40 --total 400 --threads 2
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
sys.path.insert(0, os.path.join(ROOT, "tools", "corpus"))
from torch_llama import TorchLlama, param_names  # noqa: E402
import prepare  # noqa: E402


def schedule(step, lr, min_lr, warmup, total):
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if total <= 0:
        return lr
    if step >= total:
        return min_lr
    p = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * p))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--total", type=int, default=0, help="schedule length (default --steps)")
    for k, v in (("d-model", 128), ("layers", 4), ("heads", 4), ("kv-heads", 4), ("d-head", 32), ("d-ff", 344),
                 ("batch", 16), ("seq", 128), ("warmup", 40), ("threads", 2), ("eval-batches", 8), ("seed", 1)):
        ap.add_argument("--" + k, type=int, default=v)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr", type=float, default=3e-4)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    train, vocab, _ = prepare.read_tokens(os.path.join(a.data, "train.bin"))
    val, _, _ = prepare.read_tokens(os.path.join(a.data, "val.bin"))
    cfg = dict(vocab_size=vocab, d_model=a.d_model, n_layers=a.layers, n_heads=a.heads, n_kv_heads=a.kv_heads,
               d_head=a.d_head, d_ff=a.d_ff, rms_eps=1e-5, rope_theta=10000.0, tie_embeddings=1)
    rng = np.random.default_rng(a.seed)
    params = {}
    for n in param_names(cfg):
        if n.endswith("layernorm.weight") or n == "model.norm.weight":
            params[n] = np.ones(a.d_model, np.float32)
        else:
            shape = {"embed_tokens": (vocab, a.d_model)}.get(n.split(".")[1], None)
            params[n] = None
    # shapes from HF naming
    H, KV, dh, d, ff = a.heads, a.kv_heads, a.d_head, a.d_model, a.d_ff
    shapes = {"q_proj": (H * dh, d), "k_proj": (KV * dh, d), "v_proj": (KV * dh, d), "o_proj": (d, H * dh),
              "gate_proj": (ff, d), "up_proj": (ff, d), "down_proj": (d, ff)}
    for n in params:
        if params[n] is None:
            shp = (vocab, d) if "embed_tokens" in n else shapes[n.split(".")[-2]]
            params[n] = rng.normal(0, 0.02, size=shp).astype(np.float32)
    model = TorchLlama(cfg, params, dtype=torch.float32)
    tp = list(model.p.values())
    opt = torch.optim.AdamW([{"params": [p for p in tp if p.dim() == 2], "weight_decay": 0.1},
                             {"params": [p for p in tp if p.dim() != 2], "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    total = a.total or a.steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: schedule(s, a.lr, a.min_lr, a.warmup, total) / a.lr)
    B, T = a.batch, a.seq
    pos = 0

    def batch(arr, p):
        x = np.stack([arr[p + b * T: p + b * T + T] for b in range(B)]).astype(np.int64)
        y = np.stack([arr[p + b * T + 1: p + b * T + T + 1] for b in range(B)]).astype(np.int64)
        return x, y

    def evaluate():
        # TorchLlama retains site gradients, so evaluation runs with autograd on
        return float(np.mean([float(model.forward(*batch(val, i * B * T))["loss"].detach())
                              for i in range(a.eval_batches)]))

    losses = []
    t0 = time.time()
    for step in range(a.steps):
        x, y = batch(train, pos)
        pos += B * T
        out = model.forward(x, y)
        model.zero_grad()
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(tp, 1.0)
        opt.step()
        sched.step()
        losses.append(float(out["loss"]))
    dt = time.time() - t0
    print(json.dumps({"impl": "pytorch " + torch.__version__, "threads": a.threads, "steps": a.steps,
                      "tokens": a.steps * B * T, "seconds": round(dt, 2), "tok_s": round(a.steps * B * T / dt, 1),
                      "first_loss": losses[0], "last_loss": losses[-1], "val_loss": evaluate()}))


if __name__ == "__main__":
    main()
