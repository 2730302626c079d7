# Memory of the paper's diagnostic protocol (streaming analysis, one
# micro-batch of 1 x T tokens) at 7-9B scale, with random bf16 weights.
#
# For the Llama-3.1-8B shape it builds models of L = 1, 2, 4 layers on the
# CPU, runs one streaming micro-batch (gsink.Analysis: forward + activation-
# gradient backward with the per-layer hooks), reads the backend's peak
# (gsink_model_memory: weights, activations, logits, scratch, the
# analysis's sums and its temporaries), fits peak = a + b*L, and compares a and b with the closed form
# below; then extrapolates to 32 layers and prints the closed-form peaks of
# the Qwen2.5-7B, Qwen3-8B and GLM-4-9B shapes, with today's analysis flags
# (ANALYSIS + DISCARD_SITE_GRADS) and with DISCARD_SITE_ACTIVATIONS.
#
#   python benchmarks/protocol_memory.py [--seq 2048,512] [--layers 1,2,4] [--flags new,today]
#   python benchmarks/protocol_memory.py --formula-only
#   python benchmarks/protocol_memory.py --full 512     # the whole 32-layer 8B shape, 1 x 512
#
# "device peak" = the backend's peak (on CUDA all of it is device memory,
# the analysis's sums included). "host total" adds the host copy of the sums
# that the report reads: what a CPU run needs beyond the process itself.
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

GiB = 2.0 ** 30

SHAPES = {
    "Llama-3.1-8B": dict(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_head=128,
                         d_ff=14336, arch="llama", tie_embeddings=0),
    "Qwen2.5-7B": dict(vocab_size=152064, d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4, d_head=128,
                       d_ff=18944, arch="qwen2", qkv_bias=1, tie_embeddings=0),
    "Qwen3-8B": dict(vocab_size=151936, d_model=4096, n_layers=36, n_heads=32, n_kv_heads=8, d_head=128,
                     d_ff=12288, arch="qwen3", qk_norm=1, tie_embeddings=0),
    # GLM-4-9B (model_type "glm"): q/k/v biases, interleaved RoPE on half of each head
    "GLM-4-9B": dict(vocab_size=151552, d_model=4096, n_layers=40, n_heads=32, n_kv_heads=2, d_head=128,
                     d_ff=13696, arch="glm", qkv_bias=1, rope_interleaved=1, rope_dims=64, tie_embeddings=0),
}


def r64(nbytes):
    return (nbytes + 63) // 64 * 64


def closed_form(s, L, T, B=1, new=True, threads=2):
    """Bytes of one streaming micro-batch of B x T, by component. Mirrors
    lib/model.c layout_acts (every buffer rounded up to 64 bytes) and
    lib/diag/stream.c (state layout, ctx_alloc)."""
    d, H, KV, dh, ff, V = (s[k] for k in ("d_model", "n_heads", "n_kv_heads", "d_head", "d_ff", "vocab_size"))
    qd, kd = H * dh, KV * dh
    qk, bias, sandwich = s.get("qk_norm", 0), s.get("qkv_bias", 0), s.get("sandwich_norm", 0)
    N = B * T
    f = lambda n: r64(4 * n)  # one fp32 buffer of n floats
    # weights: bf16 matrices (2 bytes), fp32 vectors (norm gains, biases), one V-scale theta per head
    mats = V * d * (1 if s.get("tie_embeddings") else 2) + L * (d * qd + 2 * d * kd + qd * d + 3 * d * ff)
    vecs = d + L * (2 * d + (qd + 2 * kd if bias else 0) + (2 * dh if qk else 0) + (2 * d if sandwich else 0))
    weights = 2 * mats + 4 * vecs
    # per layer: the sites the activation-gradient backward reads (resid_out = the next resid_in;
    # V-scale is off, so v_scaled shares v's storage, activation and gradient)
    kept = [d, qd, kd, kd, qd, ff, ff]  # resid_mid, q, k, v, z, mlp_pre, mlp_up
    unread = [d, d]  # attn_out, mlp_out
    # attn_norm_out, mlp_norm_out, mlp_post: one buffer each in every model, recomputed per layer,
    # and the forward's norm gains they are recomputed with
    recomputed = 2 * f(N * d) + f(N * ff) + f(L * 2 * d)
    per_layer = f(N * d) + sum(f(N * w) for w in kept) + 2 * f(N) + 4 * f(N * H)  # + rstd x2, lse, column stats x3
    if qk:
        per_layer += f(N * qd) + f(N * kd) + f(N * H) + f(N * KV)
    if sandwich:
        per_layer += 2 * f(N * d) + 2 * f(N)
    shared_unread = sum(f(N * w) for w in unread)
    if not new:
        per_layer += shared_unread
    # once: resid_in of layer 0, one set of site gradients (DISCARD_SITE_GRADS), two resid gradients,
    # the final norm, logits (the backward writes dlogits over them), scratch, statistics
    grads = [d, qd, kd, kd, d, d, qd, ff, ff, ff]
    fixed = 2 * r64(4 * N) + f(N * d) + sum(f(N * w) for w in grads) + 2 * f(N * d)
    fixed += 2 * f(N * d) + f(N) + f(N * V) + f(N * max(qd, kd, d)) + recomputed
    fixed += (f(N * max(qd, kd)) if qk else 0) + (f(N) if bias else 0) + r64(12 * N * H)
    if new:
        fixed += shared_unread
    # streaming analysis: backend temporaries (a q/k/v gradient, its q/k-normed one, the projected
    # q/k/v gradients, six per-sequence norm rows), and the sums (backend memory too)
    P = min(T, 64)
    qkw = max(H, KV) * dh
    tmp_dev = 4 * (B * T * qkw + (B * T * qkw if qk else 1) + B * P * d + 6 * B * P)
    # backend workspace: the fp32 panel gemm_w widens 16-bit weights in (at most 16 Mi floats of whole
    # rows), and on the CPU the attention's per-thread score blocks (2 x min(T, 128) x T floats)
    panel = 4 * max(min((16 << 20) // c * c, r * c) for r, c in ((V, d), (qd, d), (kd, d), (d, qd), (ff, d), (d, ff)))
    ws = panel + threads * 4 * 2 * min(T, 128) * T
    S = kd  # v_scaled width
    state_per = (T * d + P * (6 * d + 2 * qd + 2 * kd + S + 3 * ff) + T + P * (14 + H + 2 * KV) +
                 P * (15 + H + 2 * KV) + P * (qd + 2 * kd) + 9 * P + 3 * H * T)
    state = 8 * (4 + L * state_per)  # gsink_analysis_state_size: the 4 global sums stay on the host
    sums = 8 * L * state_per          # the per-layer sums, in backend memory
    device = weights + per_layer * L + fixed + tmp_dev + ws + sums
    return dict(weights=weights, per_layer_acts=per_layer * L, fixed_acts=fixed, tmp_dev=tmp_dev, workspace=ws,
                device=device, sums=sums, state=state,
                weights_per_layer=2 * (d * qd + 2 * d * kd + qd * d + 3 * d * ff) +
                4 * (2 * d + (qd + 2 * kd if bias else 0) + (2 * dh if qk else 0) + (2 * d if sandwich else 0)),
                acts_per_layer=per_layer, state_per_layer=8 * state_per)


def flags_kw(new):
    return dict(analysis=True, discard_site_grads=True, discard_site_activations=new)


class SmiPeak:
    """On a GPU: the device's used memory sampled by nvidia-smi every 20 ms,
    from before the model exists to stop(): peak - first sample = what this
    process took (CUDA context, cuBLAS workspace and the backend's buffers)."""

    def __init__(self, device):
        self.p = None
        if device != "cuda":
            return
        self.p = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                                   "-lms", "20"], stdout=subprocess.PIPE, text=True)
        self.first = int(self.p.stdout.readline().split()[0])

    def stop(self):
        if not self.p:
            return None
        time.sleep(0.1)
        self.p.terminate()
        rest = [int(x.split()[0]) for x in self.p.stdout.read().split("\n") if x.strip()]
        return (max(rest + [self.first]) - self.first) * 2**20


def measure(shape, L, T, new, threads, device="cpu", report=False):
    """One streaming micro-batch of 1 x T on a random L-layer model: the
    backend's bytes after creation, its peak over the micro-batch, the
    analysis's state and temporaries, the wall seconds (on a GPU also the
    process's device memory by nvidia-smi); report=True also builds the
    report and reads the process's peak RSS."""
    import gsink
    cfg = dict(SHAPES[shape], n_layers=L, max_seq_len=max(T, 64))
    smi = SmiPeak(device)
    t0 = time.perf_counter()
    m = gsink.Model(cfg, seed=1, n_threads=threads, weight_dtype="bf16", device=device,
                    precision="bf16" if device == "cuda" else None, **flags_kw(new))
    t_create = time.perf_counter() - t0
    static, _ = m.memory(reset_peak=True)
    tok = np.random.default_rng(0).integers(0, cfg["vocab_size"], size=(1, T), dtype=np.int32)
    a = gsink.Analysis(m, T)
    t0 = time.perf_counter()
    a.add(tok)
    secs = time.perf_counter() - t0
    _, peak = m.memory()
    am = a.memory
    out = dict(static=static, peak=peak, state=am["state_bytes"], temp=am["temp_bytes"], seconds=secs,
               create=t_create)
    if report:
        out["report_bytes"] = len(a.report_json())
        out["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    a.close()
    m.close()
    out["smi"] = smi.stop()
    return out


def fmt(b):
    return f"{b / GiB:7.3f} GiB"


def fit_and_compare(shape, T, layers, new, threads, device="cpu"):
    tag = "ANALYSIS+DISCARD_SITE_GRADS+DISCARD_SITE_ACTIVATIONS" if new else "ANALYSIS+DISCARD_SITE_GRADS"
    print(f"\n== {shape}, 1 x {T}, bf16 weights, {tag} ==")
    rows = []
    for L in layers:
        r = measure(shape, L, T, new, threads, device)
        cf = closed_form(SHAPES[shape], L, T, new=new, threads=threads if device == "cpu" else 0)
        rows.append((L, r, cf))
        if r["smi"] is not None:
            print(f"L={L}: process device memory (nvidia-smi) {fmt(r['smi'])}: backend peak + "
                  f"{(r['smi'] - r['peak']) / 2**20:.0f} MiB (CUDA context, cuBLAS workspace, allocator)")
        print(f"L={L}: weights {fmt(r['static'])} (formula {fmt(cf['weights'])}), device peak {fmt(r['peak'])} "
              f"(formula {fmt(cf['device'])}, diff {(r['peak'] - cf['device']) / 2**20:+.1f} MiB), "
              f"state {r['state'] / 2**20:.1f} MiB (formula {cf['state'] / 2**20:.1f}), "
              f"temporaries {r['temp'] / 2**20:.1f} MiB, micro-batch {r['seconds']:.1f} s (create {r['create']:.1f} s)")
    Ls = np.array([x[0] for x in rows], dtype=float)
    dev = np.array([x[1]["peak"] for x in rows], dtype=float)
    b, a = np.polyfit(Ls, dev, 1)
    nt = threads if device == "cpu" else 0
    cf1, cf2 = closed_form(SHAPES[shape], 1, T, new=new, threads=nt), closed_form(SHAPES[shape], 2, T, new=new, threads=nt)
    cb = cf2["device"] - cf1["device"]
    ca = cf1["device"] - cb
    print(f"fit:     device peak = {a / GiB:.4f} GiB + L x {b / 2**20:.2f} MiB")
    print(f"formula: device peak = {ca / GiB:.4f} GiB + L x {cb / 2**20:.2f} MiB "
          f"(per layer: weights {cf1['weights_per_layer'] / 2**20:.2f} MiB + activations "
          f"{cf1['acts_per_layer'] / 2**20:.2f} MiB = {cf1['acts_per_layer'] / T / 4:.0f} floats/token)")
    agree = abs(b - cb) <= 1e-3 * cb and abs(a - ca) <= 0.01 * ca
    print(f"agree: {'yes' if agree else 'NO'} (slope {100 * (b - cb) / cb:+.4f}%, intercept {100 * (a - ca) / ca:+.3f}%)")
    full = SHAPES[shape]["n_layers"]
    print(f"extrapolated to {full} layers: device peak {fmt(a + b * full)} (formula "
          f"{fmt(closed_form(SHAPES[shape], full, T, new=new, threads=nt)['device'])})")
    return agree


def table(T):
    print(f"\n== closed-form peaks, 1 x {T}, bf16 weights (the backend's peak with the analysis's sums: device "
          f"memory on CUDA, where a report adds a host copy of the sums; on the CPU all of it is host memory) ==")
    print(f"{'shape':14s} {'L':>3s} {'weights':>12s} {'sums':>12s} {'today: device':>15s} {'new: device':>13s}")
    for name, s in SHAPES.items():
        L = s["n_layers"]
        old, new = closed_form(s, L, T, new=False), closed_form(s, L, T, new=True)
        print(f"{name:14s} {L:3d} {fmt(new['weights'])} {fmt(new['sums'])} {fmt(old['device']):>15s} "
              f"{fmt(new['device']):>13s}")


def full_run(T, threads):
    """The whole 32-layer Llama-3.1-8B shape at 1 x T in this process."""
    r = measure("Llama-3.1-8B", SHAPES["Llama-3.1-8B"]["n_layers"], T, True, threads, report=True)
    r["formula"] = closed_form(SHAPES["Llama-3.1-8B"], 32, T, new=True)
    print(json.dumps(r))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seq", default="2048,512")
    ap.add_argument("--layers", default="1,2,4")
    ap.add_argument("--flags", default="new,today")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--formula-only", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda (a GPU: bf16 math, nvidia-smi sampled)")
    ap.add_argument("--full", type=int, default=0, help="run the 32-layer 8B shape at 1 x FULL (subprocess)")
    ap.add_argument("--full-child", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.full_child:
        full_run(args.full_child, args.threads)
        return 0
    seqs = [int(x) for x in args.seq.split(",")]
    ok = True
    if not args.formula_only:
        for T in seqs:
            for fl in args.flags.split(","):
                ok &= fit_and_compare("Llama-3.1-8B", T, [int(x) for x in args.layers.split(",")], fl == "new",
                                      args.threads, args.device)
    for T in seqs:
        table(T)
    if args.full:
        print(f"\n== the full 32-layer Llama-3.1-8B shape, 1 x {args.full}, in a subprocess ==", flush=True)
        p = subprocess.run([sys.executable, __file__, "--full-child", str(args.full), "--threads", str(args.threads)],
                           capture_output=True, text=True)
        if p.returncode:
            print(f"failed (exit {p.returncode}): {p.stderr[-2000:]}")
            ok = False
        else:
            r = json.loads(p.stdout.strip().splitlines()[-1])
            f = r["formula"]
            print(f"create {r['create']:.0f} s; one micro-batch {r['seconds']:.0f} s; weights {fmt(r['static'])}; "
                  f"backend peak {fmt(r['peak'])} (formula {fmt(f['device'])}); analysis state "
                  f"{r['state'] / 2**20:.0f} MiB, temporaries {r['temp'] / 2**20:.0f} MiB; "
                  f"peak RSS {fmt(r['maxrss'])}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
