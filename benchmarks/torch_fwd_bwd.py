"""Forward+backward of the same Llama-style model as libgsink in PyTorch
(float32, autograd), timed like benchmarks/bench_fwd_bwd.c: median over
--iters iterations after --warmup, printing

    torch fwd+bwd: median M ms, min m ms, tokens/s X

Debian's torch calls BLAS through /usr/lib/x86_64-linux-gnu/libblas.so.3,
which is BLIS on this machine; --blis-arch NAME sets BLIS_ARCH_TYPE to that
kernel family before BLIS initialises, so both sides run the same kernels.
"""

import argparse
import ctypes
import ctypes.util
import math
import os
import statistics
import sys
import time

PRESETS = {  # same numbers as the library's presets (lib/config.c)
    "bench-21m": dict(vocab_size=8192, d_model=512, n_layers=4, n_heads=8, n_kv_heads=8,
                      d_head=64, d_ff=1408, tie_embeddings=False),
}


def blis_library():
    """libblis (same Debian BLIS build as torch's libblas.so.3, whose bli_*
    symbols are hidden), used only for its arch-name table."""
    for name in ("libblis.so.4", ctypes.util.find_library("blis")):
        try:
            if name:
                return ctypes.CDLL(name)
        except OSError:
            pass
    return None


def blis_arch_id(lib, name):
    lib.bli_arch_string.restype = ctypes.c_char_p
    lib.bli_arch_string.argtypes = [ctypes.c_int]
    for i in range(64):
        s = lib.bli_arch_string(i)
        if s is None:
            break
        if s.decode() == name:
            return i
        if s.decode() == "generic":
            break
    raise SystemExit("unknown BLIS kernel family %r" % name)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="bench-21m", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="0 = all online CPUs")
    ap.add_argument("--tied", action="store_true", help="tie the LM head to the embedding")
    ap.add_argument("--blis-arch", default=None, help="BLIS kernel family, e.g. haswell, skx, zen3")
    ap.add_argument("--with-gsink", action="store_true",
                    help="also time libgsink (through the Python binding) in this process, "
                         "alternating iterations, so both see the same machine load")
    args = ap.parse_args()

    threads = args.threads or os.cpu_count()
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    os.environ.setdefault("BLIS_NUM_THREADS", str(threads))
    blis = blis_library()
    if args.blis_arch:
        if blis is None:
            raise SystemExit("BLIS not found for --blis-arch")
        os.environ["BLIS_ARCH_TYPE"] = str(blis_arch_id(blis, args.blis_arch))

    import torch  # after the environment is set: BLIS reads it when it initialises
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    cfg = dict(PRESETS[args.preset])
    if args.tied:
        cfg["tie_embeddings"] = True
    V, d, L = cfg["vocab_size"], cfg["d_model"], cfg["n_layers"]
    H, KV, dh, ff = cfg["n_heads"], cfg["n_kv_heads"], cfg["d_head"], cfg["d_ff"]
    B, T = args.batch, args.seq
    g = torch.Generator().manual_seed(1)

    def w(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).requires_grad_()

    def ones(n):
        return torch.ones(n, requires_grad=True)

    P = {"embed": w(V, d), "norm": ones(d)}
    P["head"] = P["embed"] if cfg["tie_embeddings"] else w(V, d)
    layers = [dict(n1=ones(d), wq=w(H * dh, d), wk=w(KV * dh, d), wv=w(KV * dh, d),
                   wo=w(d, H * dh), n2=ones(d), wg=w(ff, d), wu=w(ff, d), wd=w(d, ff))
              for _ in range(L)]
    params = [P["embed"], P["norm"]] + ([] if cfg["tie_embeddings"] else [P["head"]]) + \
        [t for lp in layers for t in lp.values()]

    inv = 1.0 / (10000.0 ** (torch.arange(0, dh, 2, dtype=torch.float32) / dh))
    ang = torch.outer(torch.arange(T, dtype=torch.float32), inv)
    cos = torch.cat((ang, ang), -1).cos()[None, None]
    sin = torch.cat((ang, ang), -1).sin()[None, None]
    mask = torch.full((T, T), float("-inf")).triu(1)

    def rms(x, gain):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * gain

    def rope(x):
        x1, x2 = x[..., :dh // 2], x[..., dh // 2:]
        return x * cos + torch.cat((-x2, x1), -1) * sin

    def fwd_bwd(tok, tgt):
        for p in params:
            p.grad = None
        h = F.embedding(tok, P["embed"])
        for lp in layers:
            x = rms(h, lp["n1"])
            q = rope((x @ lp["wq"].T).view(B, T, H, dh).transpose(1, 2))
            k = rope((x @ lp["wk"].T).view(B, T, KV, dh).transpose(1, 2))
            v = (x @ lp["wv"].T).view(B, T, KV, dh).transpose(1, 2)
            if KV != H:
                k = k.repeat_interleave(H // KV, 1)
                v = v.repeat_interleave(H // KV, 1)
            a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh) + mask, -1)
            y = (a @ v).transpose(1, 2).reshape(B, T, H * dh)
            h = h + y @ lp["wo"].T
            x = rms(h, lp["n2"])
            h = h + (F.silu(x @ lp["wg"].T) * (x @ lp["wu"].T)) @ lp["wd"].T
        logits = rms(h, P["norm"]) @ P["head"].T
        loss = F.cross_entropy(logits.view(-1, V), tgt.view(-1))
        loss.backward()
        return float(loss)

    tok_all = torch.randint(0, V, (B, T + 1), generator=g)
    tok, tgt = tok_all[:, :-1].contiguous(), tok_all[:, 1:].contiguous()
    arch = ("BLIS_ARCH_TYPE=%s (%s)" % (os.environ["BLIS_ARCH_TYPE"], args.blis_arch)
            if args.blis_arch else "BLIS default detection")
    gm = None
    if args.with_gsink:
        import gsink
        gcfg = gsink.Config.preset(args.preset, tie_embeddings=cfg["tie_embeddings"])
        mismatch = {k: (v, getattr(gcfg, k)) for k, v in cfg.items() if getattr(gcfg, k) != v}
        if mismatch:
            raise SystemExit("torch and libgsink configs differ (torch, gsink): %s" % mismatch)
        gm = gsink.Model(gcfg, seed=1, n_threads=threads)
        g_tok = tok.numpy().astype("int32")
        g_tgt = tgt.numpy().astype("int32")
        print("libgsink %s (%s) | %s" % (gsink.version(), gsink.library_path(),
                                         gsink.device_describe()))
    times, g_times = [], []
    for it in range(-args.warmup, args.iters):
        t0 = time.perf_counter()
        loss = fwd_bwd(tok, tgt)
        dt = time.perf_counter() - t0
        g_dt = None
        if gm is not None:
            t1 = time.perf_counter()
            g_loss = gm.forward(g_tok, g_tgt)
            gm.backward()
            g_dt = time.perf_counter() - t1
        if it >= 0:
            times.append(dt)
            line = "  iter %2d: torch %8.2f ms  loss %.4f" % (it, 1e3 * dt, loss)
            if g_dt is not None:
                g_times.append(g_dt)
                line += " | gsink %8.2f ms  loss %.4f" % (1e3 * g_dt, g_loss)
            print(line)
    numel = sum(p.numel() for p in params)
    print("torch %s | BLAS %s, %s | %d threads | params %.2fM | B%d T%d"
          % (torch.__version__, torch.__config__.show().split("BLAS_INFO=")[1].split(",")[0],
             arch, torch.get_num_threads(), numel / 1e6, B, T), file=sys.stderr)
    med = statistics.median(times)
    print("torch fwd+bwd: median %.2f ms, min %.2f ms, tokens/s %.0f"
          % (1e3 * med, 1e3 * min(times), B * T / med))
    if g_times:
        g_med = statistics.median(g_times)
        print("gsink fwd+bwd (interleaved): median %.2f ms, min %.2f ms, tokens/s %.0f"
              % (1e3 * g_med, 1e3 * min(g_times), B * T / g_med))
        print("interleaved ratio libgsink/PyTorch (tokens/s): %.2fx" % (med / g_med))
        gm.close()


if __name__ == "__main__":
    main()
