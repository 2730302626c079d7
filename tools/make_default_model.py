#!/usr/bin/env python3
"""Builds models/default from a gsink-train run: the final weights stored as
float16 safetensors (half the size; the loader converts to fp32), config.json,
tokenizer.json, and sample.tokens (8 doc-start rows of 256 validation tokens,
the rows gsink-train's diagnostics use). Then checks that libgsink gives the
same loss on the sample from the fp16 copy as from the fp32 original.

    .venv/bin/python tools/make_default_model.py .cache/exp3/off/final \\
        .cache/corpus/docs-v2/val.bin models/default
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "corpus"))
sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
import prepare  # noqa: E402
from sample_tokens import doc_start_rows  # noqa: E402


def sample_loss(model_dir, rows):
    import gsink
    tok = rows.astype(np.int32)
    flat = tok.reshape(-1)
    tgt = np.append(flat[1:], -1).astype(np.int32).reshape(tok.shape)  # as gsink-cli builds them
    with gsink.Model.load(model_dir, n_threads=1) as m:
        return m.forward(np.ascontiguousarray(tok), np.ascontiguousarray(tgt))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_final", help="a run's final/ directory (model.safetensors, config.json, tokenizer.json)")
    ap.add_argument("val_bin", help="the validation token file of the run's corpus")
    ap.add_argument("out", help="output directory (models/default)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    a = ap.parse_args()

    os.makedirs(a.out, exist_ok=True)
    tensors = load_file(os.path.join(a.run_final, "model.safetensors"))
    half = {k: v.astype(np.float16) for k, v in tensors.items()}
    for k, v in tensors.items():
        if not np.isfinite(half[k]).all():
            sys.exit(f"{k}: values outside the float16 range (max |x| = {np.abs(v).max()})")
    save_file(half, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    os.chmod(os.path.join(a.out, "model.safetensors"), 0o644)
    cfg = json.load(open(os.path.join(a.run_final, "config.json")))
    cfg["torch_dtype"] = "float16"
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    shutil.copy(os.path.join(a.run_final, "tokenizer.json"), os.path.join(a.out, "tokenizer.json"))

    tokens, _, eot = prepare.read_tokens(a.val_bin)
    rows = doc_start_rows(tokens, eot, a.batch, a.seq)
    rows.reshape(-1).astype("<i4").tofile(os.path.join(a.out, "sample.tokens"))

    l32, l16 = sample_loss(a.run_final, rows), sample_loss(a.out, rows)
    n = sum(v.size for v in tensors.values())
    print(f"{a.out}: {n} parameters as float16, sample loss {l16:.5f} (fp32 original {l32:.5f})")
    if abs(l16 - l32) > 1e-2:
        sys.exit("the float16 copy changes the sample loss by more than 0.01 nats")


if __name__ == "__main__":
    main()
