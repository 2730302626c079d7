#!/usr/bin/env python3
"""PyTorch baselines for bench_cuda (run on the same GPU; see docs/cuda.md).

  torch_bench.py model [--batch 8] [--seq 1024] [--iters 10] [--dtype fp32|bf16]
                       [--attn eager|sdpa] [--tf32]
      Llama-style model with the paper-0.1b shape (L16 d512 H8 KV8 dh64 ff1408
      V50257, untied LM head): one forward+backward of the mean cross-entropy,
      median time and tokens/s. bf16 uses autocast (fp32 master weights).
  torch_bench.py attention [--batch 4] [--heads 16] [--dh 64] [--seq 1024,2048,4096,8192]
      causal scaled_dot_product_attention forward and backward, TFLOP/s with the
      FlashAttention convention (same as bench_cuda attention).

Prints "key: value" lines like bench_cuda.
"""
import argparse
import math
import statistics
import time

import torch
import torch.nn.functional as F


class RMSNorm(torch.nn.Module):
    def __init__(self, d, eps=1e-5):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


def rope_tables(T, dh, theta, device):
    inv = 1.0 / (theta ** (torch.arange(0, dh, 2, device=device).float() / dh))
    ang = torch.outer(torch.arange(T, device=device).float(), inv)
    emb = torch.cat([ang, ang], -1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


class Block(torch.nn.Module):
    def __init__(self, d, H, KV, dh, ff, attn):
        super().__init__()
        self.H, self.KV, self.dh, self.attn = H, KV, dh, attn
        self.n1, self.n2 = RMSNorm(d), RMSNorm(d)
        self.q = torch.nn.Linear(d, H * dh, bias=False)
        self.k = torch.nn.Linear(d, KV * dh, bias=False)
        self.v = torch.nn.Linear(d, KV * dh, bias=False)
        self.o = torch.nn.Linear(H * dh, d, bias=False)
        self.g = torch.nn.Linear(d, ff, bias=False)
        self.u = torch.nn.Linear(d, ff, bias=False)
        self.dn = torch.nn.Linear(ff, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        h = self.n1(x)
        q = self.q(h).view(B, T, self.H, self.dh).transpose(1, 2)
        k = self.k(h).view(B, T, self.KV, self.dh).transpose(1, 2)
        v = self.v(h).view(B, T, self.KV, self.dh).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.KV != self.H:
            k = k.repeat_interleave(self.H // self.KV, 1)
            v = v.repeat_interleave(self.H // self.KV, 1)
        if self.attn == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            s = (q @ k.transpose(-1, -2)) / math.sqrt(self.dh)
            mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
            s = s.masked_fill(mask, float("-inf"))
            y = torch.softmax(s.float(), -1).to(q.dtype) @ v
        x = x + self.o(y.transpose(1, 2).reshape(B, T, -1))
        h = self.n2(x)
        return x + self.dn(F.silu(self.g(h)) * self.u(h))


class Llama(torch.nn.Module):
    def __init__(self, V=50257, d=512, L=16, H=8, KV=8, dh=64, ff=1408, attn="sdpa"):
        super().__init__()
        self.dh = dh
        self.emb = torch.nn.Embedding(V, d)
        self.blocks = torch.nn.ModuleList(Block(d, H, KV, dh, ff, attn) for _ in range(L))
        self.norm = RMSNorm(d)
        self.head = torch.nn.Linear(d, V, bias=False)
        for p in self.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=0.02)

    def forward(self, tok, tgt):
        cos, sin = rope_tables(tok.shape[1], self.dh, 10000.0, tok.device)
        x = self.emb(tok)
        for b in self.blocks:
            x = b(x, cos, sin)
        logits = self.head(self.norm(x))
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), tgt.view(-1), ignore_index=-1)


def timed(fn, iters, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def bench_model(a):
    torch.backends.cuda.matmul.allow_tf32 = a.tf32
    torch.backends.cudnn.allow_tf32 = a.tf32
    dev = "cuda"
    m = Llama(attn=a.attn).to(dev)
    B, T = a.batch, a.seq
    tok = torch.randint(0, 50257, (B, T), device=dev)
    tgt = torch.roll(tok, -1, 1)
    tgt[:, -1] = -1

    def step():
        m.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
            loss = m(tok, tgt)
        loss.backward()

    torch.cuda.reset_peak_memory_stats()
    t = timed(step, a.iters)
    print(f"device: {torch.cuda.get_device_name()} torch {torch.__version__}")
    print(f"config: torch {a.attn} {a.dtype}{' tf32' if a.tf32 else ''} B {B} T {T}")
    print(f"step_ms_median: {t * 1e3:.3f}")
    print(f"tokens_per_s: {B * T / t:.1f}")
    print(f"peak_mem_gib: {torch.cuda.max_memory_allocated() / 2**30:.2f}")


def bench_attention(a):
    dev = "cuda"
    for T in [int(s) for s in a.seq.split(",")]:
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = (torch.randn(a.batch, a.heads, T, a.dh, device=dev, dtype=dtype, requires_grad=True)
                       for _ in range(3))
            dy = torch.randn_like(q)
            f = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
            tf = timed(f, a.iters)
            y = f()
            tb = timed(lambda: torch.autograd.grad(y, (q, k, v), dy, retain_graph=True), a.iters)
            flops = 2.0 * a.batch * a.heads * T * T * a.dh
            print(f"torch_sdpa {str(dtype).split('.')[-1]} B {a.batch} H {a.heads} dh {a.dh} T {T}: "
                  f"fwd_ms {tf * 1e3:.3f} fwd_tflops {flops / tf * 1e-12:.2f} bwd_ms {tb * 1e3:.3f} "
                  f"bwd_tflops {2.5 * flops / tb * 1e-12:.2f}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["model", "attention"])
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", default=None)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--attn", choices=["eager", "sdpa"], default="sdpa")
    p.add_argument("--tf32", action="store_true")
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--dh", type=int, default=64)
    a = p.parse_args()
    if a.what == "model":
        a.batch = a.batch or 8
        a.seq = int(a.seq or 1024)
        bench_model(a)
    else:
        a.batch = a.batch or 4
        a.seq = a.seq or "1024,2048,4096,8192"
        bench_attention(a)


if __name__ == "__main__":
    main()
