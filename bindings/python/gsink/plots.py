"""Figures of the paper from a "gsink.report/1" report (docs/report-schema.md).

matplotlib is an optional dependency, imported only when a function is
called. Every function takes the report as a dict (Model.report()) or a JSON
string/path, returns the matplotlib Figure, and saves it when `path` is given.

    rep = model.report()
    gsink.plots.gradient_sink_distribution(rep, path="fig1.png")   # Fig. 1/6
    gsink.plots.gradient_sink_distribution(analysis)               # every position of a streamed batch
    gsink.plots.qkv_gradient_norms(rep, layer=3)                    # Fig. 2
    gsink.plots.branch_ratios_vs_norm(rep)                          # Fig. 3
    gsink.plots.forward_phenomena(rep_base, rep_vscale)             # Fig. 7
    gsink.plots.theta_heatmap(model.theta)                          # Fig. 13
"""

import json
import os

import numpy as np

__all__ = ["gradient_sink_distribution", "qkv_gradient_norms", "branch_ratios_vs_norm",
           "forward_phenomena", "theta_heatmap", "load_report"]

SCHEMA = "gsink.report/1"


def _plt():
    try:
        import matplotlib
        if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("gsink.plots needs matplotlib (pip install matplotlib)") from e
    return plt


def load_report(report):
    """A report dict from a dict, a JSON string or a path to a JSON file;
    checks the schema name."""
    if isinstance(report, dict):
        rep = report
    elif isinstance(report, (str, bytes, os.PathLike)) and not str(report).lstrip().startswith("{"):
        with open(report, "r", encoding="utf-8") as f:
            rep = json.load(f)
    else:
        rep = json.loads(report)
    if rep.get("schema") != SCHEMA:
        raise ValueError("not a %s report (schema %r)" % (SCHEMA, rep.get("schema")))
    return rep


def _arr(x):
    """float array with None (JSON null) as NaN."""
    return np.array([np.nan if v is None else v for v in x], dtype=float)


def _finish(fig, path):
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def _label(rep, default):
    m = rep.get("model", {})
    vs = rep.get("vscale", {}).get("mode", "off")
    name = "L%s d%s" % (m.get("n_layers", "?"), m.get("d_model", "?"))
    return default or (name + ("" if vs == "off" else " V-scale (%s)" % vs))


def gradient_sink_distribution(report, site="attn_norm_out", path=None, title=None):
    """Fig. 1/6: per layer, the token-wise distribution of log10 ||dL/dx_t||
    at a site (default the post-RMSNorm attention input), token 0 in red.
    report may also be a gsink.Analysis (streaming over micro-batches): then
    the attn_norm_out distribution covers every position of the sequence, not
    only the report's first profile_len."""
    plt = _plt()
    full = None
    if hasattr(report, "gradient_norms") and hasattr(report, "report"):  # a gsink.Analysis
        an = report
        report = an.report()
        if site == "attn_norm_out":
            agg = report["options"]["batch_agg"]
            full = [an.gradient_norms(l["layer"], site, agg=agg) for l in report["layers"]]
    rep = load_report(report)
    layers = rep["layers"]
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(layers) + 2), 3.6))
    data, t0 = [], []
    for i, lay in enumerate(layers):
        g = np.asarray(full[i], dtype=float) if full is not None else _arr(lay["gradient_norms"][site])
        with np.errstate(divide="ignore", invalid="ignore"):
            lg = np.log10(g)
        rest = lg[1:][np.isfinite(lg[1:])]
        data.append(rest if rest.size else np.array([np.nan]))
        t0.append(lg[0] if lg.size else np.nan)
    pos = np.arange(len(layers))
    ax.boxplot(data, positions=pos, widths=0.6, showfliers=False)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data):
        ax.scatter(i + rng.uniform(-0.18, 0.18, d.size), d, s=4, color="0.55", alpha=0.6,
                   zorder=2)
    ax.scatter(pos, t0, color="red", s=24, zorder=3, label="token 0")
    ax.set_xticks(pos)
    ax.set_xticklabels([str(l["layer"]) for l in layers])
    ax.set_xlabel("layer")
    ax.set_ylabel("log10 ||dL/d %s_t||" % site)
    s = rep.get("summary", {}).get("gradient_sink_ratio") or {}
    med = s.get("median")
    ax.set_title(title or "%s: gradient sinks%s" % (
        _label(rep, None), "" if med is None else " (median R_GS %.1f)" % med), fontsize=9)
    ax.legend(loc="best", fontsize=8)
    return _finish(fig, path)


def qkv_gradient_norms(report, layer=None, path=None, title=None):
    """Fig. 2: ||g_q||, ||g_k||, ||g_v|| by position (g = dL/d attn_norm_out
    split into the Q, K and V paths) for one layer, or every layer in a grid."""
    plt = _plt()
    rep = load_report(report)
    layers = rep["layers"] if layer is None else [rep["layers"][layer]]
    n = len(layers)
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, lay in zip(axes.flat, layers):
        split = lay["qkv_gradient_split"]
        for key, color in (("q", "tab:blue"), ("k", "tab:orange"), ("v", "tab:green")):
            y = _arr(split[key])
            ax.plot(np.arange(y.size), y, label="||g_%s||" % key, color=color, lw=1.2)
        ax.set_yscale("log")
        ax.set_title("layer %d" % lay["layer"], fontsize=9)
        ax.set_xlabel("position t")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(title or "%s: Q/K/V gradient norms" % _label(rep, None), fontsize=10)
    return _finish(fig, path)


def branch_ratios_vs_norm(report, branch="both", path=None, title=None):
    """Fig. 3: Bloat, Change and Compress per token against the activation
    norm of the branch input (resid_in for attention, resid_mid for the MLP),
    all layers pooled; token 0 in red."""
    plt = _plt()
    rep = load_report(report)
    branches = ("attn", "mlp") if branch == "both" else (branch,)
    fig, axes = plt.subplots(len(branches), 3, figsize=(10, 3.0 * len(branches)), squeeze=False)
    for r, br in enumerate(branches):
        site = "resid_in" if br == "attn" else "resid_mid"
        for c, key in enumerate(("bloat", "change", "compress")):
            ax = axes[r][c]
            xs, ys, x0, y0 = [], [], [], []
            for lay in rep["layers"]:
                x = _arr(lay["activation_norms"][site])
                y = _arr(lay["branch"][br][key])
                k = min(x.size, y.size)
                xs.append(x[1:k])
                ys.append(y[1:k])
                if k:
                    x0.append(x[0])
                    y0.append(y[0])
            ax.scatter(np.concatenate(xs), np.concatenate(ys), s=5, color="0.5", alpha=0.6,
                       label="tokens t > 0")
            ax.scatter(x0, y0, s=22, color="red", label="token 0")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("||%s_t||" % site)
            ax.set_ylabel(key.capitalize())
            ax.set_title("%s branch: %s" % (br, key.capitalize()), fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title or "%s: branch gradient reshaping" % _label(rep, None), fontsize=10)
    return _finish(fig, path)


def forward_phenomena(report_a, report_b=None, labels=None, path=None, title=None):
    """Fig. 7: per layer, the sink rate and t0/early ratios of the residual
    output, MLP output and attention output norms, for one or two models
    side by side (e.g. baseline vs V-scale)."""
    plt = _plt()
    reps = [load_report(report_a)] + ([load_report(report_b)] if report_b is not None else [])
    labels = list(labels) if labels else [_label(r, None) for r in reps]
    panels = (("sink rate", None), ("resid_out t0/early", "resid_out"),
              ("mlp_out t0/early", "mlp_out"), ("attn_out t0/early", "attn_out"))
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.0))
    for rep, lab, style in zip(reps, labels, ("-o", "--s")):
        layer_ids = [l["layer"] for l in rep["layers"]]
        for ax, (name, site) in zip(axes, panels):
            if site is None:
                y = _arr([l["sink_rate"] for l in rep["layers"]])
            else:
                y = _arr([l["massive_activation_ratio"].get(site) for l in rep["layers"]])
            ax.plot(layer_ids, y, style, ms=3, label=lab)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("layer")
    axes[0].set_ylim(-0.05, 1.05)
    for ax in axes[1:]:
        ax.axhline(1.0, color="0.7", lw=0.8)
    axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _finish(fig, path)


def theta_heatmap(theta, path=None, title=None):
    """Fig. 13: learned V-scale theta (layers x heads), color centered at 0.
    theta is an array, a gsink.Model (its theta), or a report whose "vscale"
    object carries a "theta" matrix."""
    plt = _plt()
    if hasattr(theta, "theta") and not isinstance(theta, dict):
        theta = theta.theta
    elif isinstance(theta, dict):
        theta = load_report(theta)["vscale"]["theta"]
    th = np.asarray(theta, dtype=float)
    if th.ndim != 2 or th.size == 0:
        raise ValueError("theta must be a non-empty (layers, heads) matrix; is V-scale on?")
    lim = float(np.nanmax(np.abs(th))) or 1.0
    fig, ax = plt.subplots(figsize=(0.5 * th.shape[1] + 2.5, 0.35 * th.shape[0] + 1.5))
    im = ax.imshow(th, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, label="theta")
    ax.set_title(title or "V-scale theta", fontsize=10)
    return _finish(fig, path)
