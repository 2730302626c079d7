#!/usr/bin/env python3
"""Measured error of every supported architecture against HuggingFace.

Runs the HF fixtures (tests/data/hf-archs/<arch>: tiny random models made by
transformers 5.17 in float64) through libgsink on the CPU and, when
GSINK_CUDA_MODULE names a CUDA module (a GPU's, or the emulated one), on the
CUDA backend, and prints a Markdown table of max |ours - HF| / max |HF| per
quantity (the computation of tests/io/test_hf_archs.py).

  GSINK_LIBRARY=build/lib/libgsink.so PYTHONPATH=bindings/python \\
  GSINK_CUDA_MODULE=build/tests/cuda/libgsink-cuda-emu.so \\
  .venv/bin/python tools/hf_arch_table.py
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "io"))

import test_hf_archs as t  # noqa: E402

QUANTITIES = ("loss", "logits", "resid_out_norm", "grad_h_norm", "attn_colmass", "r_gs")


def main():
    print("| architecture | device | " + " | ".join(QUANTITIES) + " |")
    print("|---|---|" + "---|" * len(QUANTITIES))
    for arch in sorted(t.ARCHS):
        for dev in t.devices():
            m, ref, got = t.run(arch, dev)
            with m:
                label = dev if dev == "cpu" else "cuda (%s)" % os.path.basename(os.environ["GSINK_CUDA_MODULE"])
                print("| %s | %s | %s |" % (arch, label,
                                            " | ".join("%.1e" % t.rel(got[q], ref[q]) for q in QUANTITIES)))


if __name__ == "__main__":
    main()
