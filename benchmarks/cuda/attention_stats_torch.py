# gsink.torch.attention_with_stats against PyTorch SDPA plus a separate
# statistics pass (the embedding issue's GPU benchmark).
#
#   gsink   out, stats = attention_with_stats(q, k, v): causal attention with
#           the column statistics (mass, sq, sink window) computed inside the
#           library's kernel; backward through the library; float32.
#   torch   scaled_dot_product_attention(is_causal=True) for the output and
#           its backward, plus what a user adds to get the same statistics:
#           the probabilities recomputed block by block from q, k and the
#           log-sum-exp (B x H x 1024 x T at a time) and summed over queries.
# Same inputs (B, T, H, d_head) float32; median milliseconds over --iters
# after warm-up for the forward (+ statistics) and for forward + backward,
# and the largest relative difference of gsink's outputs and statistics
# from torch's as a check that both computed the same thing.
#
#   GSINK_LIBRARY=BUILD/lib/libgsink.so GSINK_CUDA_MODULE=BUILD/cuda/libgsink-cuda.so \
#   PYTHONPATH=bindings/python python3 benchmarks/cuda/attention_stats_torch.py
#   ... --device cpu --seq 128 --iters 2      # check the script on the CPU
import argparse
import math
import statistics
import time

import torch

import gsink.torch as gt


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, dev, iters, warmup):
    for _ in range(warmup):
        fn()
    sync(dev)
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(dev)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def sdpa(q, k, v):
    """(B, H, T, d) causal attention: SDPA where PyTorch has it (2.0+), else the math."""
    if hasattr(torch.nn.functional, "scaled_dot_product_attention"):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.shape[-2]
    s = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


def stats_pass(q, k, window, block=1024):
    """Column statistics of the causal softmax of (B, H, T, d) q, k, computed
    block by block over the queries: mass[s] = sum_t a_ts, sq[s] = sum_t a_ts^2,
    win[s] = sum_{t = s}^{s + window - 1} a_ts; each (B, H, T)."""
    B, H, T, d = q.shape
    scale = 1.0 / math.sqrt(d)
    mass = torch.zeros(B, H, T, device=q.device)
    sq = torch.zeros_like(mass)
    win = torch.zeros_like(mass)
    cols = torch.arange(T, device=q.device)
    for t0 in range(0, T, block):
        t1 = min(T, t0 + block)
        rows = torch.arange(t0, t1, device=q.device)[:, None]
        s = (q[:, :, t0:t1] @ k.transpose(-1, -2)) * scale
        s = s.masked_fill(cols[None, :] > rows, float("-inf"))
        p = torch.softmax(s, -1)
        mass += p.sum(-2)
        sq += (p * p).sum(-2)
        band = (rows - cols[None, :] >= 0) & (rows - cols[None, :] < window)
        win += (p * band).sum(-2)
    return mass, sq, win


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def case(args, dev, B, T, H, dh):
    g = torch.Generator(device="cpu").manual_seed(T + dh)
    q, k, v, dout = (torch.randn(B, T, H, dh, generator=g).to(dev) for _ in range(4))
    W = args.window

    def g_fwd():
        return gt.attention_with_stats(q, k, v, sink_window=W)

    qg, kg, vg = (x.clone().requires_grad_() for x in (q, k, v))

    def g_step():
        out, st = gt.attention_with_stats(qg, kg, vg, sink_window=W)
        out.backward(dout)
        return out, st

    qh, kh, vh = (x.transpose(1, 2).contiguous() for x in (q, k, v))
    qt, kt, vt = (x.clone().requires_grad_() for x in (qh, kh, vh))
    dh_ = dout.transpose(1, 2).contiguous()

    def t_fwd():
        with torch.no_grad():
            return sdpa(qh, kh, vh), stats_pass(qh, kh, W)

    def t_step():
        out = sdpa(qt, kt, vt)
        out.backward(dh_)
        with torch.no_grad():
            st = stats_pass(qt, kt, W)
        return out, st

    res = {}
    res["gsink_fwd"] = timed(g_fwd, dev, args.iters, args.warmup)
    res["gsink_step"] = timed(g_step, dev, args.iters, args.warmup)
    res["torch_fwd"] = timed(t_fwd, dev, args.iters, args.warmup)
    res["torch_step"] = timed(t_step, dev, args.iters, args.warmup)
    # the check: outputs, statistics and gradients of one fresh step each
    for x in (qg, kg, vg, qt, kt, vt):
        x.grad = None
    og, sg = g_step()
    ot, st = t_step()
    err = max(rel(og, ot.transpose(1, 2)), rel(sg.col_mass, st[0]), rel(sg.col_sq, st[1]), rel(sg.col_win, st[2]),
              rel(qg.grad, qt.grad.transpose(1, 2)), rel(kg.grad, kt.grad.transpose(1, 2)),
              rel(vg.grad, vt.grad.transpose(1, 2)))
    flops = 4.0 * B * H * T * T * dh / 2  # causal: QK^T and PV, half the square
    print(f"B {B} T {T:5d} H {H:2d} dh {dh:3d} | forward + stats: gsink {res['gsink_fwd']:8.2f} ms "
          f"({flops / res['gsink_fwd'] * 1e-9:6.1f} TFLOP/s), torch SDPA + pass {res['torch_fwd']:8.2f} ms, "
          f"ratio {res['torch_fwd'] / res['gsink_fwd']:.2f}x | fwd + bwd + stats: gsink {res['gsink_step']:8.2f} ms, "
          f"torch {res['torch_step']:8.2f} ms, ratio {res['torch_step'] / res['gsink_step']:.2f}x | "
          f"max rel diff {err:.1e}", flush=True)
    return err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", default="1024,2048,4096")
    ap.add_argument("--dh", default="64,128")
    ap.add_argument("--width", type=int, default=1024, help="H * d_head")
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    dev = torch.device(args.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, float32 (TF32 off), "
              f"ratio = torch time / gsink time")
    worst = 0.0
    for dh in (int(x) for x in args.dh.split(",")):
        for T in (int(x) for x in args.seq.split(",")):
            worst = max(worst, case(args, dev, args.batch, T, args.width // dh, dh))
    print(f"worst max rel diff {worst:.1e}")
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    raise SystemExit(main())
