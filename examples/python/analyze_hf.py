#!/usr/bin/env python3
"""Analyse a HuggingFace causal LM directory with gsink.hf: one forward and
backward with hooks, the gsink.report/1 JSON report and Figure 1 (the
token-wise gradient norms at the input_layernorm output, token 0 in red).

    PYTHONPATH=bindings/python python examples/python/analyze_hf.py path/to/hf_dir \\
        --json report.json --figure fig1.png [--text "..."] [--seq 64] [--attention gsink]
    PYTHONPATH=bindings/python python examples/python/analyze_hf.py --tiny   # a tiny random Llama

With --text and a tokenizer in the directory the text is the input
(truncated to --seq + 1 tokens), otherwise random tokens (--seed). The loss is
next-token cross-entropy. --attention gsink measures the attention with the
library's kernel in place of the model's (attention="probs", the default,
reads the model's eager attention probabilities).
"""

import argparse
import json
import os
import sys
import tempfile

import numpy as np

try:
    import torch
    import transformers
except ImportError:
    print("analyze_hf.py needs PyTorch and transformers")
    sys.exit(77)

import gsink.hf


def tiny_llama(path):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=172, max_position_embeddings=256)
    transformers.LlamaForCausalLM(cfg).save_pretrained(path, safe_serialization=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="HF model directory")
    ap.add_argument("--tiny", action="store_true", help="analyse a tiny random Llama instead")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--figure", help="write Figure 1 here (needs matplotlib)")
    ap.add_argument("--text")
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sink-window", type=int, default=16)
    ap.add_argument("--attention", default="probs", choices=["probs", "gsink"])
    args = ap.parse_args()
    if not args.model and not args.tiny:
        ap.error("give a model directory or --tiny")
    tmp = None
    path = args.model
    if args.tiny:
        tmp = tempfile.TemporaryDirectory()
        path = tmp.name
        tiny_llama(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    if args.text and os.path.exists(os.path.join(path, "tokenizer.json")):
        tok = transformers.AutoTokenizer.from_pretrained(path)
        ids = np.asarray(tok(args.text)["input_ids"][: args.seq + 1])[None]
    else:
        rng = np.random.default_rng(args.seed)
        ids = rng.integers(0, model.config.vocab_size, (args.batch, args.seq + 1))
    rep = gsink.hf.analyze(model, ids, attention=args.attention, sink_window=min(args.sink_window, ids.shape[1] - 1))
    print("%s: %d layers, batch %d, seq %d, loss %.4f"
          % (model.config.model_type, len(rep["layers"]), rep["input"]["batch"], rep["input"]["seq_len"],
             rep["input"]["loss"]))
    fmt = lambda x: "null" if x is None else "%.3f" % x  # noqa: E731
    for lay in rep["layers"]:
        print("layer %2d  R_GS(0) %s  sink rate %s  t0/early(resid_out) %s"
              % (lay["layer"], fmt(lay["gradient_sink_ratio"]), fmt(lay["sink_rate"]),
                 fmt(lay["massive_activation_ratio"].get("resid_out"))))
    s = rep["summary"]["gradient_sink_ratio"]
    if s["n_layers"]:
        print("R_GS(0) median %.3f, IQR %.3f; mean sink rate %s"
              % (s["median"], s["q3"] - s["q1"], fmt(rep["summary"]["sink_rate"]["mean"])))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rep, f, indent=1)
        print("wrote", args.json)
    if args.figure:
        try:
            from gsink import plots
            plots.gradient_sink_distribution(rep, path=args.figure, title="%s: gradient norms at h~"
                                             % model.config.model_type)
            print("wrote", args.figure)
        except ImportError:
            print("no matplotlib: Figure 1 skipped")
    if tmp:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
