"""Overhead of the Python binding for one forward+backward.

Times, interleaved in one process on the same model and tokens:
  binding: model.forward(tokens, targets); model.backward()   (gsink.Model)
  raw:     the two C functions called directly through ctypes with
           pre-built arguments (what a C caller pays, plus one FFI hop)
and prints the medians and the overhead of the binding relative to the raw
calls. run_fwd_bwd.sh also compares with the C program's median.
"""

import argparse
import ctypes
import statistics
import time

import numpy as np

import gsink
from gsink import _lib


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="bench-21m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()

    m = gsink.Model(args.preset, seed=1, n_threads=args.threads)
    V = m.config.vocab_size
    rng = np.random.default_rng(1)
    tok_all = rng.integers(0, V, size=(args.batch, args.seq + 1), dtype=np.int32)
    tok = np.ascontiguousarray(tok_all[:, :-1])
    tgt = np.ascontiguousarray(tok_all[:, 1:])
    B, T = tok.shape

    h = m._handle()
    fwd, bwd = _lib.lib.gsink_forward, _lib.lib.gsink_backward
    loss = ctypes.c_float()
    p_tok, p_tgt, p_loss = tok.ctypes.data, tgt.ctypes.data, ctypes.byref(loss)

    def raw():
        if fwd(h, p_tok, p_tgt, B, T, p_loss) or bwd(h, 0):
            raise RuntimeError(gsink.last_error())

    def binding():
        m.forward(tok, tgt)
        m.backward()

    t_raw, t_bind = [], []
    for it in range(-args.warmup, args.iters):
        for fn, acc in ((raw, t_raw), (binding, t_bind)) if it % 2 == 0 else \
                ((binding, t_bind), (raw, t_raw)):
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            if it >= 0:
                acc.append(dt)

    # The wrapper's own cost, measured without the model's compute: the
    # Python-side work of forward()+backward() minus the raw calls, on a
    # 1-token batch of a tiny model (microseconds).
    small = gsink.Model("micro", seed=1, n_threads=1)
    stok = np.zeros((1, 1), dtype=np.int32)
    sh = small._handle()
    s_tok = stok.ctypes.data

    def block_bind(n):
        t0 = time.perf_counter()
        for _ in range(n):
            small.forward(stok, stok)
            small.backward()
        return (time.perf_counter() - t0) / n

    def block_raw(n):
        t0 = time.perf_counter()
        for _ in range(n):
            fwd(sh, s_tok, s_tok, 1, 1, p_loss)
            bwd(sh, 0)
        return (time.perf_counter() - t0) / n

    block_bind(200)
    block_raw(200)
    diffs, raws = [], []
    for _ in range(15):
        b, r = block_bind(200), block_raw(200)
        diffs.append(b - r)
        raws.append(r)
    per_call = statistics.median(diffs)

    mr, mb = statistics.median(t_raw), statistics.median(t_bind)
    print("raw ctypes fwd+bwd: median %.2f ms, tokens/s %.0f" % (1e3 * mr, B * T / mr))
    print("binding fwd+bwd:    median %.2f ms, tokens/s %.0f" % (1e3 * mb, B * T / mb))
    print("binding overhead vs raw call (medians): %+.2f%%" % (100 * (mb - mr) / mr))
    print("wrapper cost per forward+backward: %.1f us (micro model, 1 token: raw calls %.1f us); "
          "%.4f%% of the %.0f ms step"
          % (1e6 * per_call, 1e6 * statistics.median(raws), 100 * per_call / mr, 1e3 * mr))
    m.close()
    small.close()


if __name__ == "__main__":
    main()
