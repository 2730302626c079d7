"""gsink-cli analyze --plots: the SVG figures show the report's numbers.

Figure 1 (per layer: token 0 and the quartiles of log10 ||dL/dh~_t|| over
t >= 1, R_GS median and IQR in the title), Figures 3 and 10 (one point per
layer and early token, at log10 of the activation norm and of the ratio).
The report's numbers are checked against numpy elsewhere (test_diag_reference);
here the figures are checked against the report, recomputing every drawn
statistic with numpy."""
import json
import os
import re
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest

CLI = os.environ.get("GSINK_CLI")
NS = "{http://www.w3.org/2000/svg}"


def run(tmp_path, *extra):
    if not CLI:
        pytest.fail("GSINK_CLI is not set (run through meson test)")
    rep, plots = tmp_path / "r.json", tmp_path / "plots"
    r = subprocess.run([CLI, "analyze", "--preset", "tiny", "--batch", "2", "--seq", "64", "--seed", "3",
                        "--json", str(rep), "--plots", str(plots), *extra], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return json.load(open(rep)), plots


def test_figure1_matches_report(tmp_path):
    rep, plots = run(tmp_path)
    root = ET.parse(plots / "fig1_gradient_sinks.svg").getroot()
    groups = [g for g in root.iter(NS + "g") if g.get("class") == "layer"]
    assert len(groups) == len(rep["layers"])
    for g, lay in zip(groups, rep["layers"]):
        lg = np.log10(np.array(lay["gradient_norms"]["attn_norm_out"], dtype=np.float64))
        assert lg.size == 64
        t0 = [c for c in g.iter(NS + "circle") if c.get("class") == "token0"]
        assert len(t0) == 1 and float(t0[0].get("data-log10")) == pytest.approx(lg[0], rel=1e-5, abs=1e-6)
        dots = [c for c in g.iter(NS + "circle") if c.get("class") != "token0"]
        assert len(dots) == 63  # every position t >= 1
        box = [r for r in g.iter(NS + "rect") if r.get("class") == "box"][0]
        q1, q2, q3 = np.percentile(lg[1:], [25, 50, 75])
        for key, v in (("data-q1", q1), ("data-median", q2), ("data-q3", q3)):
            assert float(box.get(key)) == pytest.approx(v, rel=1e-5, abs=1e-6)
    title = "".join(t.text or "" for t in root.iter(NS + "text") if "R_GS" in (t.text or ""))
    med, lo, hi = map(float, re.search(r"median ([\d.]+), IQR ([\d.]+)-([\d.]+)", title).groups())
    rgs = np.array([lay["gradient_sink_ratio"] for lay in rep["layers"]], dtype=np.float64)
    assert med == pytest.approx(np.median(rgs), abs=0.006)
    assert lo == pytest.approx(np.percentile(rgs, 25), abs=0.006)
    assert hi == pytest.approx(np.percentile(rgs, 75), abs=0.006)


@pytest.mark.parametrize("fig,branch,site", [("fig3_attn_branch.svg", "attn", "resid_in"),
                                             ("fig10_mlp_branch.svg", "mlp", "resid_mid")])
def test_branch_figures_match_report(tmp_path, fig, branch, site):
    rep, plots = run(tmp_path, "--agg", "per-seq")
    root = ET.parse(plots / fig).getroot()
    panels = [g for g in root.iter(NS + "g") if g.get("class") == "panel"]
    assert [p.get("data-metric") for p in panels] == ["Bloat", "Change", "Compress"]
    for p in panels:
        pts = {(int(c.get("data-layer")), int(c.get("data-token"))): (float(c.get("cx")), float(c.get("cy")))
               for c in p.iter(NS + "circle")}
        assert len(pts) == len(rep["layers"]) * 16
        # the pixel positions are an increasing affine map of the log values:
        # fit it on the data and require every point on it
        xs, ys, px, py = [], [], [], []
        for lay in rep["layers"]:
            h = np.array(lay["activation_norms"][site][:16], dtype=np.float64)
            y = np.array(lay["branch"][branch][p.get("data-metric").lower()][:16], dtype=np.float64)
            for t in range(16):
                cx, cy = pts[(lay["layer"], t)]
                xs.append(np.log10(h[t])); ys.append(np.log10(y[t])); px.append(cx); py.append(cy)
        for data, pix, sign in ((xs, px, 1), (ys, py, -1)):
            a, b = np.polyfit(data, pix, 1)
            assert sign * a > 0
            assert np.max(np.abs(np.polyval([a, b], data) - pix)) < 0.11  # SVG coordinates have 1 decimal


def test_plots_dir_unwritable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = subprocess.run([CLI, "analyze", "--preset", "tiny", "--seq", "32", "--plots", str(blocker / "sub")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "cannot create" in r.stderr
