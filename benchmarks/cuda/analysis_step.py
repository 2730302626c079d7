# The paper's analysis step on a GPU (issue "protocol at 7-9B scale", speed
# target): SmolLM2-135M's shape, B x T tokens (default 8 x 2048), forward +
# backward + the measurements, for
#   gsink      libgsink's streaming analysis (gsink.Analysis: one micro-batch
#              of B sequences, then the full JSON report), fp32 / tf32 / bf16
#              (bf16: bf16 weights too), activation-gradient backward;
#   hf-eager   HuggingFace transformers, eager attention, what users write
#              today: output_attentions=True (the attention probabilities,
#              whose column sums give the sink statistics) and forward hooks
#              retaining the gradient at every input_layernorm output, then
#              the per-position gradient norms and column sums on the GPU;
#   hf-sdpa    transformers with SDPA attention, forward + backward only, no
#              attention statistics (a lower bound for what a measurement
#              costs), bf16 by default.
# Every system reads the same weights (a random SmolLM2-shaped model saved
# once with save_pretrained) and the same tokens, and each (system,
# precision) runs in its own process so its memory is its own: the median
# step time over --iters after --warmup, the peak device memory (gsink: the
# backend's peak, gsink_model_memory; HF: torch.cuda.max_memory_allocated),
# and, as a cross-check of the numbers, the layer-wise gradient-norm profile
# at attn_norm_out (sum over the batch, then the norm) of gsink against
# hf-eager at the same precision (relative error, max over layers and
# positions).
#
#   GSINK_LIBRARY=BUILD/lib/libgsink.so GSINK_CUDA_MODULE=BUILD/cuda/libgsink-cuda.so \
#   PYTHONPATH=bindings/python python3 benchmarks/cuda/analysis_step.py [--batch 8 --seq 2048]
#   ... --device cpu --tiny      # check the script on the CPU (tiny model)
#   ... --device cpu --n-layers 2 --batch 1 --runs gsink:fp32 --layers 2   # the report's cost
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
               rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
TINY = dict(SMOLLM2, vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)


def make_model_dir(path, tiny, n_layers=0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = dict(TINY if tiny else SMOLLM2)
    if n_layers:
        cfg["num_hidden_layers"] = n_layers
    cfg = LlamaConfig(**cfg)
    m = LlamaForCausalLM(cfg)
    m.save_pretrained(path, safe_serialization=True)


def tokens(args, vocab):
    import numpy as np
    return np.random.default_rng(1).integers(0, vocab, size=(args.batch, args.seq), dtype=np.int32)


def run_gsink(args, prec):
    import gsink
    m = gsink.Model.load(args.workdir, device=args.device, precision=prec,
                         weight_dtype="bf16" if prec == "bf16" else None, analysis=True,
                         discard_site_grads=True, discard_site_activations=True)
    tok = tokens(args, m.config["vocab_size"] if isinstance(m.config, dict) else m.config.vocab_size)
    times, add_times = [], []
    _, peak0 = m.memory(reset_peak=True)
    for it in range(args.warmup + args.iters):
        a = gsink.Analysis(m, args.seq)
        t0 = time.perf_counter()
        a.add(tok)
        t1 = time.perf_counter()
        a.report_json()
        t2 = time.perf_counter()
        if it >= args.warmup:
            times.append(t2 - t0)
            add_times.append(t1 - t0)
        if it == args.warmup + args.iters - 1:
            prof = [a.gradient_norms(l, "attn_norm_out").tolist() for l in range(args.layers)]
        a.close()
    _, peak = m.memory()
    m.close()
    return dict(step_s=statistics.median(times), add_s=statistics.median(add_times),
                report_s=statistics.median(times) - statistics.median(add_times),
                peak_gib=peak / 2**30, profile=prof)


def run_hf(args, system, prec):
    import torch
    from transformers import LlamaForCausalLM
    dev = torch.device(args.device)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = prec == "tf32"
        torch.backends.cudnn.allow_tf32 = prec == "tf32"
    attn = "eager" if system == "hf-eager" else "sdpa"
    m = LlamaForCausalLM.from_pretrained(args.workdir, attn_implementation=attn)
    m = m.to(dev, dtype=torch.bfloat16 if prec == "bf16" else torch.float32)
    tok = torch.from_numpy(tokens(args, m.config.vocab_size).astype("int64")).to(dev)
    layers = m.model.layers
    stats = system == "hf-eager"
    kept = {}

    def hook(l):
        def f(mod, inp, out):
            out.retain_grad()
            kept[l] = out
        return f

    handles = [layers[l].input_layernorm.register_forward_hook(hook(l)) for l in range(len(layers))] if stats else []

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    def step():
        kept.clear()
        m.zero_grad(set_to_none=True)
        out = m(input_ids=tok, labels=tok, output_attentions=stats)
        out.loss.backward()
        res = None
        if stats:
            # per-layer: ||sum_b dL/dx_bt|| per position (Figure 1) and the
            # attention column mass sum_t a_ts per head (the sink statistics)
            norms = torch.stack([kept[l].grad.float().sum(0).norm(dim=-1) for l in range(len(layers))])
            mass = torch.stack([a.float().sum(dim=-2).mean(0) for a in out.attentions])
            res = (norms, mass)
        sync()
        return res

    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    res = None
    for it in range(args.warmup + args.iters):
        t0 = time.perf_counter()
        res = step()
        if it >= args.warmup:
            times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
    for h in handles:
        h.remove()
    prof = res[0][: args.layers].cpu().tolist() if res else None
    return dict(step_s=statistics.median(times), peak_gib=peak, profile=prof)


def child(args):
    if args.system == "gsink":
        r = run_gsink(args, args.precision)
    else:
        r = run_hf(args, args.system, args.precision)
    print("RESULT " + json.dumps(r))


def rel_err(a, b):
    worst = 0.0
    for ra, rb in zip(a, b):
        scale = max(abs(x) for x in rb) or 1.0
        worst = max(worst, max(abs(x - y) for x, y in zip(ra, rb)) / scale)
    return worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a 3-layer toy model (checking the script)")
    ap.add_argument("--n-layers", type=int, default=0, help="override the depth (e.g. 2 for the report's cost "
                                                              "on the CPU, which grows linearly with it)")
    ap.add_argument("--runs", default="gsink:fp32,gsink:tf32,gsink:bf16,hf-eager:fp32,hf-eager:tf32,"
                                      "hf-eager:bf16,hf-sdpa:bf16")
    ap.add_argument("--layers", type=int, default=3, help="layers whose profiles are cross-checked")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--system", help=argparse.SUPPRESS)
    ap.add_argument("--precision", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.system:
        child(args)
        return 0
    own = args.workdir is None
    tmp = tempfile.TemporaryDirectory(prefix="gsink-analysis-step-") if own else None
    args.workdir = args.workdir or tmp.name
    make_model_dir(args.workdir, args.tiny, args.n_layers)
    print(f"# analysis step: {'tiny' if args.tiny else 'SmolLM2-135M'} shape"
          f"{f' with {args.n_layers} layers' if args.n_layers else ''}, {args.batch} x {args.seq} tokens, "
          f"device {args.device}, median of {args.iters} after {args.warmup} warm-up")
    results = {}
    ok = True
    for run in args.runs.split(","):
        system, prec = run.split(":")
        cmd = [sys.executable, __file__, "--system", system, "--precision", prec, "--workdir", args.workdir,
               "--batch", str(args.batch), "--seq", str(args.seq), "--iters", str(args.iters),
               "--warmup", str(args.warmup), "--device", args.device, "--layers", str(args.layers)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if p.returncode or not line:
            print(f"{system:9s} {prec:5s} FAILED (exit {p.returncode}): {p.stderr.strip()[-600:]}", flush=True)
            ok = False
            continue
        r = json.loads(line[-1][7:])
        results[(system, prec)] = r
        extra = f" (add {r['add_s']:.3f} s + report {r['report_s'] * 1e3:.1f} ms)" if system == "gsink" else ""
        print(f"{system:9s} {prec:5s} step {r['step_s']:.3f} s{extra}, peak memory {r['peak_gib']:.2f} GiB "
              f"[process {wall:.0f} s]", flush=True)
    print("\n# ratios (same precision): HF eager + hooks time / gsink time; gsink time / HF SDPA bf16 time")
    sdpa = results.get(("hf-sdpa", "bf16"))
    for prec in ("fp32", "tf32", "bf16"):
        g, e = results.get(("gsink", prec)), results.get(("hf-eager", prec))
        if not g:
            continue
        parts = []
        if e:
            parts.append(f"HF eager + hooks time / gsink time = {e['step_s'] / g['step_s']:.2f} (goal >= 2; "
                         f"memory {g['peak_gib']:.2f} vs {e['peak_gib']:.2f} GiB)")
            if g.get("profile") and e.get("profile"):
                parts.append(f"attn_norm_out gradient profiles vs HF eager: max rel err "
                             f"{rel_err(g['profile'], e['profile']):.2e}")
        if sdpa and prec == "bf16":
            parts.append(f"gsink time / HF SDPA bf16 time = {g['step_s'] / sdpa['step_s']:.2f} (goal <= 1.5; "
                         f"memory {g['peak_gib']:.2f} vs {sdpa['peak_gib']:.2f} GiB)")
        if parts:
            print(f"gsink {prec}: " + "; ".join(parts))
    if tmp:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
