#!/usr/bin/env python3
"""Tables and figures for the baseline vs V-scale experiment.

  python docs/results/experiment/analyze.py RUNS_DIR [OUT_DIR]

RUNS_DIR holds one gsink-train run directory per mode: off/, full/,
backward-only/ (log.jsonl, diag.jsonl, final_diag.json). Writes
  fig6_gradient_sinks.png  token-wise log10 ||dL/d h~_t|| per layer (paper Fig. 6)
  fig7_forward.png         sink rate, t0/early at resid_out, mlp_out, attn_out (paper Fig. 7)
  fig13_theta.png          learned theta per layer and head (paper Fig. 13)
  curves.png               validation loss, mean sink rate and R_GS over training
and prints the Markdown tables used in README.md.
"""
import json
import os
import sys

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

MODES = [("off", "baseline"), ("full", "V-scale (full, learnable θ)"), ("backward-only", "V-scale (backward-only)")]


def load(run):
    logs = [json.loads(x) for x in open(os.path.join(run, "log.jsonl"))]
    diag = [json.loads(x) for x in open(os.path.join(run, "diag.jsonl"))]
    fpath = os.path.join(run, "final_diag.json")
    final = json.load(open(fpath)) if os.path.exists(fpath) else diag[-1]
    val = {d["step"]: d["val_loss"] for d in logs if "val_loss" in d}
    return {"val": val, "diag": diag, "final": final, "config": logs[0].get("config", {})}


def fmt(x, nd=2):
    return "–" if x is None else f"{x:.{nd}f}"


def main():
    runs_dir = sys.argv[1]
    out = sys.argv[2] if len(sys.argv) > 2 else os.path.dirname(os.path.abspath(__file__))
    R = {m: load(os.path.join(runs_dir, m)) for m, _ in MODES if os.path.exists(os.path.join(runs_dir, m, "diag.jsonl"))}
    modes = [(m, lab) for m, lab in MODES if m in R]
    L = len(next(iter(R.values()))["final"]["layers"])

    # ---- tables
    print("| | " + " | ".join(lab for _, lab in modes) + " |")
    print("|---|" + "---|" * len(modes))
    row = lambda name, f: print(f"| {name} | " + " | ".join(f(R[m]) for m, _ in modes) + " |")  # noqa: E731
    row("final step", lambda r: str(r["final"]["step"]))
    row("validation loss (nats)", lambda r: fmt(r["val"][max(r["val"])], 4))
    row("mean sink rate", lambda r: fmt(np.mean([x["sink_rate"] for x in r["final"]["layers"]]), 3))
    row("heads with sink score > 0.3", lambda r: f"{sum(int(np.sum(np.array(x['sink_scores']) > 0.3)) for x in r['final']['layers'])}"
        f" / {sum(len(x['sink_scores']) for x in r['final']['layers'])}")
    row("largest head sink score", lambda r: fmt(max(max(x["sink_scores"]) for x in r["final"]["layers"])))
    row("median R_GS over layers", lambda r: fmt(np.median([x["r_gs"] for x in r["final"]["layers"]])))
    row("resid_out t0/early (last layer)", lambda r: fmt(r["final"]["layers"][-1]["resid_out_t0_early"]))
    row("mlp_out t0/early (max over layers)", lambda r: fmt(max(x["mlp_out_t0_early"] for x in r["final"]["layers"])))
    print()
    print("Per layer (sink rate / resid_out t0/early / mlp_out t0/early / R_GS):\n")
    print("| layer | " + " | ".join(lab for _, lab in modes) + " |")
    print("|---|" + "---|" * len(modes))
    for l in range(L):
        cells = []
        for m, _ in modes:
            x = R[m]["final"]["layers"][l]
            cells.append(f"{fmt(x['sink_rate'])} / {fmt(x['resid_out_t0_early'])} / {fmt(x['mlp_out_t0_early'])} / "
                         f"{fmt(x['r_gs'])}")
        print(f"| {l} | " + " | ".join(cells) + " |")
    print("\nSink score α_0 per head (rows = layers; uniform attention over the first 64 queries gives 0.07):\n")
    print("| layer | " + " | ".join(lab for _, lab in modes) + " |")
    print("|---|" + "---|" * len(modes))
    for l in range(L):
        print(f"| {l} | " + " | ".join(" ".join(f"{v:.2f}" for v in R[m]["final"]["layers"][l]["sink_scores"])
                                      for m, _ in modes) + " |")
    if "full" in R and "theta" in R["full"]["final"]["layers"][0]:
        print("\nLearned θ (full V-scale), rows = layers, columns = heads:\n")
        th = np.array([x["theta"] for x in R["full"]["final"]["layers"]])
        print("| layer | " + " | ".join(f"h{h}" for h in range(th.shape[1])) + " |")
        print("|---|" + "---|" * th.shape[1])
        for l in range(L):
            print(f"| {l} | " + " | ".join(f"{v:+.3f}" for v in th[l]) + " |")

    # ---- Figure 6: token-wise gradient norms at the post-RMSNorm attention input
    if all("grad_norm_attn_norm_out" in R[m]["final"]["layers"][0] for m, _ in modes):
        fig, axes = plt.subplots(len(modes), L, figsize=(3.2 * L, 2.6 * len(modes)), squeeze=False)
        for i, (m, lab) in enumerate(modes):
            for l in range(L):
                g = np.log10(np.maximum(np.array(R[m]["final"]["layers"][l]["grad_norm_attn_norm_out"]), 1e-30))
                ax = axes[i][l]
                ax.plot(np.arange(len(g)), g, lw=0.8, color="tab:blue")
                ax.scatter([0], [g[0]], color="tab:red", zorder=3, s=18, label="token 0")
                ax.set_title(f"{lab}\nlayer {l}", fontsize=8)
                ax.tick_params(labelsize=7)
                if l == 0:
                    ax.set_ylabel("log10 ||dL/dh~_t||", fontsize=8)
                if i == len(modes) - 1:
                    ax.set_xlabel("position t", fontsize=8)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "fig6_gradient_sinks.png"), dpi=110)
        plt.close(fig)

    # ---- Figure 7: forward phenomena per layer
    keys = [("sink_rate", "sink rate"), ("resid_out_t0_early", "resid_out t0/early"),
            ("mlp_out_t0_early", "mlp_out t0/early"), ("attn_out_t0_early", "attn_out t0/early")]
    keys = [("sink_max", "largest head sink score α_0")] + keys
    for m, _ in modes:
        for x in R[m]["final"]["layers"]:
            x["sink_max"] = max(x["sink_scores"])
    fig, axes = plt.subplots(1, 5, figsize=(17.5, 3.2))
    for ax, (k, title) in zip(axes, keys):
        for m, lab in modes:
            ax.plot(range(L), [x[k] for x in R[m]["final"]["layers"]], marker="o", label=lab)
        ax.set_title(title)
        ax.set_xlabel("layer")
        if k == "sink_max":
            ax.axhline(0.3, color="gray", lw=0.6, ls="--")
        elif k != "sink_rate":
            ax.axhline(1.0, color="gray", lw=0.6, ls="--")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "fig7_forward.png"), dpi=110)
    plt.close(fig)

    # ---- Figure 13: learned theta
    if "full" in R and "theta" in R["full"]["final"]["layers"][0]:
        th = np.array([x["theta"] for x in R["full"]["final"]["layers"]])
        lim = max(1e-3, float(np.abs(th).max()))
        fig, ax = plt.subplots(figsize=(1.2 + 0.8 * th.shape[1], 1.0 + 0.6 * L))
        im = ax.imshow(th, cmap="RdBu_r", vmin=-lim, vmax=lim)
        for l in range(L):
            for h in range(th.shape[1]):
                ax.text(h, l, f"{th[l, h]:+.2f}", ha="center", va="center", fontsize=7)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title("learned θ (full V-scale)")
        fig.colorbar(im)
        fig.tight_layout()
        fig.savefig(os.path.join(out, "fig13_theta.png"), dpi=110)
        plt.close(fig)

    # ---- curves over training
    fig, axes = plt.subplots(1, 5, figsize=(19, 3.2))
    for m, lab in modes:
        v = R[m]["val"]
        axes[0].plot(sorted(v), [v[s] for s in sorted(v)], label=lab)
        d = R[m]["diag"]
        st = [x["step"] for x in d]
        axes[1].plot(st, [np.mean([y["sink_rate"] for y in x["layers"]]) for x in d], label=lab)
        if all("sink_scores" in x["layers"][0] for x in d):
            axes[2].plot(st, [max(max(y["sink_scores"]) for y in x["layers"]) for x in d], label=lab)
        axes[3].plot(st, [max(y["resid_out_t0_early"] for y in x["layers"]) for x in d], label=lab)
        axes[4].plot(st, [np.median([y["r_gs"] for y in x["layers"]]) for x in d], label=lab)
    for ax, t in zip(axes, ["validation loss", "mean sink rate", "largest head sink score",
                            "resid_out t0/early (max over layers)", "median R_GS"]):
        ax.set_title(t)
        ax.set_xlabel("step")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "curves.png"), dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
