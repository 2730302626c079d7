"""Streaming diagnostics (gsink.Analysis, Model.analyze) against an
independent PyTorch float64 computation of the whole batch at once.

A batch of 16 sequences runs through the library in micro-batches of 3
(3+3+3+3+3+1); PyTorch runs all 16 at once with the batch-mean loss over
every target token. Compared: R_GS(0; 31), the sum-then-norm gradient norms
(the full attn_norm_out profile and the report's profiles), Bloat / Change /
Compress of both branches (both aggregations) and the Q/K/V split. A
negative control shows the comparison tells the right loss normalisation
from the naive mean of micro-batch means.
"""

import os
import sys

import numpy as np
import pytest
import torch  # noqa: F401  (a missing torch must fail the suite, not skip it)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "bindings", "python"))

import gsink  # noqa: E402
from torch_llama import TorchLlama  # noqa: E402

TOL = 1e-4
NSEQ, SEQ, MB = 16, 40, 3

CFG = dict(vocab_size=59, d_model=24, n_layers=3, n_heads=6, n_kv_heads=2, d_head=6, d_ff=36,
           max_seq_len=64, tie_embeddings=0, init_std=0.1)


def rel_err(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb else float(np.linalg.norm(a))


def next_token_targets(tokens):
    t = np.full_like(tokens, -1)
    t[:, :-1] = tokens[:, 1:]
    return t


def rgs(g, s=0, t_e=31):
    others = [g[t] for t in range(t_e + 1) if t != s]
    return g[s] / (np.sum(others) / t_e)


@pytest.fixture(scope="module")
def setup():
    model = gsink.Model(gsink.Config(**CFG), seed=3, n_threads=1, analysis=True, discard_site_grads=True)
    cfg = model.config.to_dict()
    rng = np.random.default_rng(7)
    tokens = rng.integers(0, CFG["vocab_size"], size=(NSEQ, SEQ), dtype=np.int32)
    tokens[:, 0] = 1  # a shared first token, as a separator would be
    params = {n: model.get_param(n) for n, _ in model.param_info()}
    ref = TorchLlama(cfg, params).run(tokens, next_token_targets(tokens))
    an = gsink.Analysis(model, SEQ, sink_window=16)
    for i in range(0, NSEQ, MB):
        an.add(tokens[i:i + MB])
    an.finish()
    yield model, cfg, tokens, params, ref, an
    an.close()
    model.close()


def sum_norm(g):
    return np.linalg.norm(g.sum(0), axis=-1)


def per_seq(g):
    return np.linalg.norm(g, axis=-1).mean(0)


@pytest.mark.parametrize("agg", ["sum_then_norm", "per_sequence"])
def test_rgs_and_gradient_norms_match_torch(setup, agg):
    model, cfg, tokens, params, ref, an = setup
    rep = an.report(batch_agg=agg)
    assert rep["input"]["sequences"] == NSEQ and rep["input"]["micro_batches"] == 6
    assert rep["input"]["n_targets"] == NSEQ * (SEQ - 1)
    assert abs(rep["input"]["loss"] - ref["loss"]) / ref["loss"] < TOL
    agg_fn = sum_norm if agg == "sum_then_norm" else per_seq
    worst = 0.0
    for l in range(cfg["n_layers"]):
        g = ref["site_grads"][(l, "attn_norm_out")]
        want = agg_fn(g)
        full = an.gradient_norms(l, "attn_norm_out", agg=agg)
        assert full.shape == (SEQ,)
        worst = max(worst, rel_err(full, want))
        e = abs(rep["layers"][l]["gradient_sink_ratio"] - rgs(want)) / rgs(want)
        assert e < TOL, (l, e)
        for site in ("resid_in", "resid_mid", "q", "k", "v", "mlp_post"):
            e = rel_err(rep["layers"][l]["gradient_norms"][site], agg_fn(ref["site_grads"][(l, site)]))
            assert e < TOL, (l, site, e)
            worst = max(worst, e)
    assert worst < TOL
    print("\n[stream vs torch, %s] gradient norms worst rel err %.2e" % (agg, worst))


@pytest.mark.parametrize("agg", ["sum_then_norm", "per_sequence"])
def test_branch_ratios_match_torch(setup, agg):
    model, cfg, tokens, params, ref, an = setup
    rep = an.report(batch_agg=agg)
    sg = ref["site_grads"]
    for l in range(cfg["n_layers"]):
        for br, (s_in, s_out, s_norm) in (("attn", ("resid_in", "resid_mid", "attn_norm_out")),
                                          ("mlp", ("resid_mid", "resid_out", "mlp_norm_out"))):
            din, dout, dnorm = sg[(l, s_in)], sg[(l, s_out)], sg[(l, s_norm)]
            if agg == "sum_then_norm":
                din, dout, dnorm = din.sum(0), dout.sum(0), dnorm.sum(0)
            n1 = np.linalg.norm(dout, axis=-1)
            np.seterr(invalid="ignore", divide="ignore")
            bloat = np.linalg.norm(dnorm, axis=-1) / n1
            change = np.linalg.norm(din, axis=-1) / n1
            compress = np.linalg.norm(din - dout, axis=-1) / np.linalg.norm(dnorm, axis=-1)
            if agg == "per_sequence":
                bloat, change, compress = bloat.mean(0), change.mean(0), compress.mean(0)
            got = rep["layers"][l]["branch"][br]
            for k, want in (("bloat", bloat), ("change", change), ("compress", compress)):
                # the last position has no target and no later query: its
                # gradients are 0, the ratios 0/0 (null in the report)
                g = np.array([np.nan if v is None else v for v in got[k]], dtype=np.float64)
                assert np.isnan(g[-1]) and np.isnan(want[-1]), (l, br, k)
                e = rel_err(g[:-1], want[:-1])
                assert e < TOL, (l, br, k, e)


def test_qkv_split_matches_torch(setup):
    model, cfg, tokens, params, ref, an = setup
    rep = an.report(batch_agg="sum_then_norm")
    for l in range(cfg["n_layers"]):
        pre = "model.layers.%d.self_attn." % l
        w = {p: params[pre + p + "_proj.weight"].astype(np.float64) for p in "qkv"}
        parts = {"q": ref["extra_grads"][(l, "q_proj")] @ w["q"],
                 "k": ref["extra_grads"][(l, "k_proj")] @ w["k"],
                 "v": ref["site_grads"][(l, "v")] @ w["v"]}
        for p in "qkv":
            e = rel_err(rep["layers"][l]["qkv_gradient_split"][p], sum_norm(parts[p]))
            assert e < TOL, (l, p, e)


def test_naive_micro_batch_mean_is_detected(setup):
    """Negative control: the mean of the micro-batch mean-loss gradients (the
    wrong normalisation for 3+3+3+3+3+1) is far from the batch gradient."""
    model, cfg, tokens, params, ref, an = setup
    g = ref["site_grads"][(0, "attn_norm_out")] * (NSEQ * (SEQ - 1))  # per-token-sum gradient
    chunks = [g[i:i + MB] for i in range(0, NSEQ, MB)]
    naive = sum(c.sum(0) / (len(c) * (SEQ - 1)) for c in chunks) / len(chunks)
    assert rel_err(np.linalg.norm(naive, axis=-1), sum_norm(ref["site_grads"][(0, "attn_norm_out")])) > 100 * TOL
    assert rel_err(an.gradient_norms(0, "attn_norm_out"), sum_norm(ref["site_grads"][(0, "attn_norm_out")])) < TOL


def test_one_call_and_progress(setup):
    model, cfg, tokens, params, ref, an = setup
    seen = []
    rep = model.analyze(tokens, micro_batch=MB, progress=lambda d, t: seen.append((d, t)), sink_window=16)
    assert seen == [(3, 16), (6, 16), (9, 16), (12, 16), (15, 16), (16, 16)]
    same = an.report(batch_agg="sum_then_norm")
    assert rep["layers"][1]["gradient_sink_ratio"] == pytest.approx(same["layers"][1]["gradient_sink_ratio"],
                                                                    rel=1e-6)
    with pytest.raises(gsink.CancelledError):
        model.analyze(tokens, micro_batch=MB, progress=lambda d, t: d >= 6)

    class Stop(Exception):
        pass

    def boom(d, t):
        raise Stop()

    with pytest.raises(Stop):
        model.analyze(tokens, micro_batch=MB, progress=boom)
    with pytest.raises(gsink.CallOrderError):
        an.add(tokens[:1])  # finished


def test_state_sum_of_two_handles(setup):
    model, cfg, tokens, params, ref, an = setup
    a, b, c = (gsink.Analysis(model, SEQ, sink_window=16) for _ in range(3))
    a.add(tokens[:5])
    b.add(tokens[5:11])
    b.add(tokens[11:])
    c.set_state(a.state() + b.state())
    assert c.counts == {"sequences": NSEQ, "micro_batches": 3, "n_targets": NSEQ * (SEQ - 1)}
    want = sum_norm(ref["site_grads"][(2, "attn_norm_out")])
    assert rel_err(c.gradient_norms(2, "attn_norm_out"), want) < TOL
    with pytest.raises(gsink.ShapeMismatchError):
        c.set_state(a.state()[:-1])
    with pytest.raises(gsink.ShapeMismatchError):
        a.add(tokens[:2, :SEQ - 1])
    assert a.memory["state_bytes"] == c.memory["state_bytes"]
    for h in (a, b, c):
        h.close()
