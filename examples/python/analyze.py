#!/usr/bin/env python3
"""Load a model, run forward + backward, print R_GS, sink rate and t0/early
per layer: the Python twin of examples/c/analyze.c.

    python examples/python/analyze.py                     # preset "micro", seed 1234
    python examples/python/analyze.py --preset tiny --seed 7
    python examples/python/analyze.py path/to/hf_dir_or.gguf
    python examples/python/analyze.py --plots out/        # the paper's figures (matplotlib)

Run from a source checkout with PYTHONPATH=bindings/python (the build tree's
libgsink is found automatically) or after `pip install ./bindings/python`.
"""

import argparse
import os
import sys

import numpy as np

import gsink

BATCH = 2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help="HF directory, .safetensors or .gguf (default: preset)")
    ap.add_argument("--preset", default="micro")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--vscale", choices=["off", "full", "backward_only"], default="off")
    ap.add_argument("--plots", metavar="DIR", help="write the paper's figures to DIR")
    args = ap.parse_args()

    if args.model:
        model = gsink.Model.load(args.model, seed=args.seed)
    else:
        model = gsink.Model(args.preset, seed=args.seed)
    with model:
        cfg = model.config
        T = min(args.seq, cfg.max_seq_len)
        if args.vscale != "off":
            model.vscale_enable(args.vscale)
        d = model.diag_options
        model.set_diag_options(sink_window=min(d["sink_window"], T),
                               rgs_window=min(d["rgs_window"], T - 1))
        # the same deterministic batch as the C example
        b = np.arange(BATCH)[:, None]
        t = np.arange(T)[None, :]
        tokens = ((31 * b + 7 * t + 3) % cfg.vocab_size).astype(np.int32)
        targets = ((31 * b + 7 * (t + 1) + 3) % cfg.vocab_size).astype(np.int32)
        targets[:, -1] = -1  # ignored

        loss = model.forward(tokens, targets)
        model.backward()
        print("libgsink %s, %s, %d layers, batch %d x %d tokens"
              % (gsink.version(), args.model or args.preset, cfg.n_layers, BATCH, T))
        print("loss %.6f" % loss)
        print("%5s %10s %10s %10s" % ("layer", "R_GS", "sink_rate", "t0/early"))
        for layer in range(cfg.n_layers):
            rgs = model.gradient_sink_ratio(layer)
            rate = model.sink_rate(layer)
            t0 = model.massive_activation_ratio("resid_out", layer) if T >= 16 else float("nan")
            print("%5d %10.4f %10.4f %10.4f" % (layer, rgs, rate, t0))

        if args.plots:
            from gsink import plots
            os.makedirs(args.plots, exist_ok=True)
            rep = model.report()
            plots.gradient_sink_distribution(rep, path=os.path.join(args.plots, "fig1_gradient_sinks.png"))
            plots.qkv_gradient_norms(rep, path=os.path.join(args.plots, "fig2_qkv.png"))
            plots.branch_ratios_vs_norm(rep, path=os.path.join(args.plots, "fig3_branches.png"))
            plots.forward_phenomena(rep, path=os.path.join(args.plots, "fig7_forward.png"))
            if args.vscale != "off":
                plots.theta_heatmap(model.theta, path=os.path.join(args.plots, "fig13_theta.png"))
            print("figures written to %s" % args.plots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
