"""The paper's diagnostic protocol on the CPU: N packed sequences of T tokens
run in micro-batches, gradients summed over the whole batch, then the
report. libgsink (streaming analysis, gsink.Model.analyze) against PyTorch
float32 doing the same with hooks, on the same machine in one run:

  libgsink  Model.load(GGUF, analysis) + analyze(tokens, micro_batch=M):
            the full gsink.report/1 (every metric of every layer and head)
  PyTorch   HuggingFace LlamaForCausalLM (transformers 4.40, eager attention)
            with the same weights (dequantised by libgsink), forward hooks
            retaining the gradient at each input_layernorm output and
            output_attentions=True; per micro-batch the loss is the sum of
            the token losses over the whole batch's token count, the summed
            gradient and the attention column sums accumulate across
            micro-batches: R_GS, the sink scores and the activation norms
            only (a subset of the report)

Each side runs in a subprocess of its own, so its peak RSS is its own. The
R_GS of both sides are compared as a check that they measured the same.

  .venv/bin/python benchmarks/protocol_cpu.py [--model GGUF] [--sequences 16]
        [--seq 512] [--micro-batch 1] [--threads 2]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TEXTS = ["/usr/share/common-licenses/GPL-3", "/usr/share/common-licenses/Apache-2.0",
         "/usr/share/common-licenses/GPL-2", "/usr/share/common-licenses/LGPL-2.1",
         "/usr/share/common-licenses/MPL-2.0", "/usr/share/common-licenses/Artistic"]


def packed_tokens(gsink, gguf, n, T):
    """Documents packed with the end-of-text separator after each, no BOS."""
    import numpy as np
    tok = gsink.Tokenizer(gguf)
    eos = tok.special[1]
    ids = []
    for p in TEXTS * 8:
        if os.path.exists(p):
            ids += list(tok.encode(open(p, encoding="utf-8", errors="replace").read())) + [eos]
        if len(ids) >= n * T:
            break
    if len(ids) < n * T:
        raise SystemExit("not enough text for %d x %d tokens" % (n, T))
    return np.array(ids[:n * T], dtype=np.int32).reshape(n, T)


def run_gsink(a):
    import numpy as np
    import gsink
    tokens = packed_tokens(gsink, a.model, a.sequences, a.seq)
    m = gsink.Model.load(a.model, n_threads=a.threads, analysis=True, discard_site_grads=True,
                         discard_site_activations=True)
    t0 = time.perf_counter()
    rep = m.analyze(tokens, micro_batch=a.micro_batch)
    dt = time.perf_counter() - t0
    np.save(a.tokens_out, tokens)
    rgs = [lay["gradient_sink_ratio"] for lay in rep["layers"]]
    return dict(seconds=dt, rgs=rgs, n_layers=len(rgs))


def run_torch(a):
    import numpy as np
    import torch
    import gsink
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.set_num_threads(a.threads)
    tokens = torch.from_numpy(np.load(a.tokens_out).astype(np.int64))
    g = gsink.Model.load(a.model, n_threads=a.threads)
    c = g.config
    cfg = LlamaConfig(vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.d_ff,
                      num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads,
                      num_key_value_heads=c.n_kv_heads, head_dim=c.d_head, max_position_embeddings=c.max_seq_len,
                      rms_norm_eps=c.rms_eps, rope_theta=c.rope_theta, tie_word_embeddings=bool(c.tie_embeddings),
                      attn_implementation="eager")
    hf = LlamaForCausalLM(cfg).float().eval()
    sd = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in g.params().items()
          if "v_scale_theta" not in k}
    if c.tie_embeddings:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    hf.load_state_dict(sd, strict=False)
    g.close()
    for p in hf.parameters():
        p.requires_grad_(False)  # activation gradients only, as the analysis model
    L, T, N = c.n_layers, a.seq, a.sequences
    kept = {}

    def hook(layer):
        def f(_mod, _inp, out):
            out.requires_grad_(True)
            out.retain_grad()
            kept[layer] = out
        return f

    for l, layer in enumerate(hf.model.layers):
        layer.input_layernorm.register_forward_hook(hook(l))
    gsum = torch.zeros(L, T, c.d_model, dtype=torch.float64)
    mass = torch.zeros(L, c.n_heads, T, dtype=torch.float64)
    total = N * (T - 1)
    t0 = time.perf_counter()
    for s in range(0, N, a.micro_batch):
        x = tokens[s:s + a.micro_batch]
        out = hf(input_ids=x, output_attentions=True)
        logits = out.logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                                                 reduction="sum") / total
        loss.backward()
        with torch.no_grad():
            for l in range(L):
                gsum[l] += kept[l].grad.double().sum(0)
                att = out.attentions[l].double()  # (B, H, T, T)
                mass[l] += att.sum(0).sum(1)      # column mass M_s summed over the batch
        kept.clear()
    dt = time.perf_counter() - t0
    nrm = gsum.norm(dim=-1)  # (L, T)
    te = 31
    rgs = (nrm[:, 0] / nrm[:, 1:te + 1].mean(1)).tolist()
    return dict(seconds=dt, rgs=rgs, n_layers=L)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/gsink/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--sequences", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--side", choices=["gsink", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--tokens-out", default="/tmp/gsink-protocol-tokens.npy", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.side:
        r = (run_gsink if a.side == "gsink" else run_torch)(a)
        r["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(r))
        return
    res = {}
    for side in ("gsink", "torch"):
        cmd = [sys.executable, os.path.abspath(__file__), "--side", side] + sys.argv[1:]
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            raise SystemExit("%s side failed:\n%s" % (side, p.stderr[-3000:]))
        res[side] = json.loads(p.stdout.strip().splitlines()[-1])
    ntok = a.sequences * a.seq
    print("protocol: %s, %d sequences x %d tokens in micro-batches of %d, %d threads" %
          (os.path.basename(a.model), a.sequences, a.seq, a.micro_batch, a.threads))
    for side, label in (("gsink", "libgsink streaming analysis (full report)"),
                        ("torch", "PyTorch fp32 + HF eager + hooks (R_GS, column mass)")):
        r = res[side]
        print("  %-52s %8.1f s  %8.0f tokens/s  peak RSS %7.0f MiB" %
              (label, r["seconds"], ntok / r["seconds"], r["peak_rss_mib"]))
    print("  speed ratio libgsink / PyTorch: %.2fx   memory ratio: %.2fx" %
          (res["torch"]["seconds"] / res["gsink"]["seconds"], res["gsink"]["peak_rss_mib"] / res["torch"]["peak_rss_mib"]))
    rel = max(abs(x - y) / abs(y) for x, y in zip(res["gsink"]["rgs"], res["torch"]["rgs"]))
    print("  check: R_GS(0) of every layer, largest relative difference %.2e" % rel)


if __name__ == "__main__":
    main()
