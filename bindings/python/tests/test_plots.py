"""gsink.plots draws every figure from a real report without error."""

import json

import numpy as np
import pytest

import gsink

matplotlib = pytest.importorskip("matplotlib")  # optional dependency of gsink.plots
matplotlib.use("Agg")
from gsink import plots  # noqa: E402


@pytest.fixture(scope="module")
def reports():
    cfg = gsink.Config(vocab_size=41, d_model=16, n_layers=3, n_heads=4, n_kv_heads=2,
                       d_head=4, d_ff=24, max_seq_len=64)
    rng = np.random.default_rng(0)
    tok = rng.integers(0, 41, size=(2, 33), dtype=np.int32)
    out = []
    for vs in (None, "full"):
        with gsink.Model(cfg, seed=4, n_threads=1) as m:
            if vs:
                m.vscale_enable(vs)
                m.theta = rng.normal(size=m.theta.shape).astype(np.float32)
            m.set_diag_options(sink_window=16)
            m.forward(tok[:, :-1], tok[:, 1:])
            m.backward()
            out.append((m.report(), m.theta))
    return out


def test_all_figures(reports, tmp_path):
    (base, _), (vsc, theta) = reports
    figs = [
        plots.gradient_sink_distribution(base, path=tmp_path / "fig1.png"),
        plots.qkv_gradient_norms(base, layer=1),
        plots.qkv_gradient_norms(json.dumps(base)),
        plots.branch_ratios_vs_norm(base, path=tmp_path / "fig3.png"),
        plots.forward_phenomena(base, vsc, labels=["baseline", "V-scale"],
                                path=tmp_path / "fig7.png"),
        plots.theta_heatmap(theta, path=tmp_path / "fig13.png"),
    ]
    assert all(f is not None for f in figs)
    for name in ("fig1.png", "fig3.png", "fig7.png", "fig13.png"):
        assert (tmp_path / name).stat().st_size > 1000
    # Fig. 1 highlights token 0 with the report's own numbers
    ax = figs[0].axes[0]
    t0 = [np.log10(l["gradient_norms"]["attn_norm_out"][0]) for l in base["layers"]]
    red = [c for c in ax.collections if c.get_label() == "token 0"][0]
    np.testing.assert_allclose(red.get_offsets()[:, 1], t0)
    import matplotlib.pyplot as plt
    plt.close("all")


def test_figure1_from_a_streamed_batch():
    """Fig. 1 from a gsink.Analysis covers every position (here 80 > 64)."""
    cfg = gsink.Config(vocab_size=41, d_model=16, n_layers=2, n_heads=4, n_kv_heads=2,
                       d_head=4, d_ff=24, max_seq_len=96)
    tok = np.random.default_rng(1).integers(0, 41, size=(4, 80), dtype=np.int32)
    with gsink.Model(cfg, seed=4, n_threads=1, analysis=True, discard_site_grads=True) as m:
        an = gsink.Analysis(m, 80, sink_window=16)
        an.add(tok[:3])
        an.add(tok[3:])
        fig = plots.gradient_sink_distribution(an)
        ax = fig.axes[0]
        pts = [c for c in ax.collections if c.get_label() != "token 0"]
        assert sum(len(c.get_offsets()) for c in pts) == 2 * 78  # 79 positions without token 0, one all-zero
        red = [c for c in ax.collections if c.get_label() == "token 0"][0]
        t0 = [np.log10(an.gradient_norms(l, "attn_norm_out")[0]) for l in range(2)]
        np.testing.assert_allclose(red.get_offsets()[:, 1], t0)
    import matplotlib.pyplot as plt
    plt.close("all")


def test_bad_inputs(reports):
    with pytest.raises(ValueError, match="schema"):
        plots.gradient_sink_distribution({"schema": "other"})
    with pytest.raises(ValueError):
        plots.theta_heatmap(np.zeros((3, 0)))
