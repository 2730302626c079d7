#!/usr/bin/env python3
"""gsink.torch.VScale against the eager PyTorch expression of the same layer
(gsink.torch.vscale_reference, i.e. VScale(backend="torch")), on CPU tensors:
forward and forward + backward, median of repeated runs, per shape.

  GSINK_LIBRARY=build/lib/libgsink.so PYTHONPATH=bindings/python \
  .venv/bin/python benchmarks/vscale_torch.py [--threads N] [--reps R]

Prints one row per shape and mode with both medians (ms) and the ratio
torch / gsink (> 1: the library is faster)."""
import argparse
import statistics
import time

import torch

import gsink.torch as gt

SHAPES = [  # (batch, seq, n_kv_heads, head_dim, d_model)
    (8, 256, 4, 64, 768),
    (8, 1024, 4, 64, 768),
    (4, 2048, 8, 128, 4096),
]


def median_ms(fn, reps):
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=0, help="torch and library threads (0: torch's default)")
    ap.add_argument("--reps", type=int, default=15)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print("torch %s, %d threads" % (torch.__version__, torch.get_num_threads()))
    print("| B x T | KV x dh | mode | pass | gsink ms | torch ms | torch / gsink |")
    print("|---|---|---|---|---|---|---|")
    for B, T, KV, dh, d in SHAPES:
        for mode in ("full", "backward_only"):
            ours = gt.VScale(KV, dh, d, mode=mode)
            ref = gt.VScale(KV, dh, d, mode=mode, backend="torch")
            v = torch.randn(B, T, KV, dh) * 0.3
            g = torch.randn(B, T, KV, dh)

            def fwd(layer):
                with torch.no_grad():
                    layer(v)

            def fwd_bwd(layer):
                x = v.clone().requires_grad_(True)
                layer(x).backward(g)

            for name, fn in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
                mo = median_ms(lambda: fn(ours), a.reps)
                mt = median_ms(lambda: fn(ref), a.reps)
                print("| %d x %d | %d x %d | %s | %s | %.3f | %.3f | %.2f |"
                      % (B, T, KV, dh, mode, name, mo, mt, mt / mo))


if __name__ == "__main__":
    main()
