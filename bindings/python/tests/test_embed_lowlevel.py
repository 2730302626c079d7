"""The numpy layer over gsink_ops_* / gsink_metric_* against the model API."""
import numpy as np
import pytest

import gsink
from gsink import _core


@pytest.fixture(scope="module")
def model():
    m = gsink.Model("micro", seed=3, n_threads=1)
    m.vscale_enable(gsink.VScaleMode.FULL, sigma=0.05)
    th = np.asarray(m.theta)
    m.theta = np.linspace(-0.5, 0.5, th.size, dtype=np.float32).reshape(th.shape)
    m.set_diag_options(sink_window=4)
    rng = np.random.default_rng(0)
    tok = rng.integers(0, m.config.vocab_size, (2, 33), dtype=np.int32)
    m.forward(tok[:, :-1], tok[:, 1:])
    m.backward()
    yield m
    m.close()


def test_ops_equal_the_model(model):
    c = model.config
    b, t = model.last_shape
    h, kv, dh = c.n_heads, c.n_kv_heads, c.d_head
    q = model.activation("q", 1).reshape(b, t, h, dh)
    k = model.activation("k", 1).reshape(b, t, kv, dh)
    v = model.activation("v", 1).reshape(b * t, kv, dh)
    theta = np.asarray(model.theta).reshape(c.n_layers, -1)[1]
    with _core.Ops(n_threads=1) as ops:
        vs = ops.vscale_forward(v, theta, c.d_model, sigma=0.05)
        np.testing.assert_allclose(vs.reshape(b, t, -1), model.activation("v_scaled", 1), rtol=2e-6, atol=1e-7)
        out, lse, mass, sq, win = ops.attention_forward(q, k, vs.reshape(b, t, kv, dh), sink_window=4)
        np.testing.assert_allclose(out.reshape(b, t, -1), model.activation("z", 1), rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(_core.metric_sink_scores(win, 4), model.sink_scores(1, 0), rtol=2e-6)
        assert _core.metric_sink_rate(win, 4, 0, 0.2) == model.sink_rate(1, 0, 0.2)
        np.testing.assert_allclose(_core.metric_column_mean(mass)[0], model.column_mass(1, 0)[0], rtol=2e-6)
        m2, _, win2 = ops.attention_stats(q, k, lse, sink_window=4)
        np.testing.assert_allclose(m2, mass, rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(win2, win, rtol=2e-6, atol=1e-7)
        dz = model.gradient("z", 1).reshape(b, t, h, dh)
        dq, dk, dvs = ops.attention_backward(q, k, vs.reshape(b, t, kv, dh), out, lse, dz)
        np.testing.assert_allclose(dq.reshape(b, t, -1), model.gradient("q", 1), rtol=2e-6, atol=1e-7)
        dtheta = np.zeros(kv, dtype=np.float32)
        dv = ops.vscale_backward(v, theta, dvs.reshape(b * t, kv, dh), c.d_model, sigma=0.05, dtheta=dtheta)
        np.testing.assert_allclose(dv.reshape(b, t, -1), model.gradient("v", 1), rtol=2e-6, atol=1e-7)
        with pytest.raises(gsink.InvalidArgumentError):
            ops.set_stream(1234)


def test_metrics_equal_the_model(model):
    g = model.gradient("attn_norm_out", 1)
    n = _core.metric_token_norms(g, agg=gsink.BatchAgg.SUM_THEN_NORM)
    np.testing.assert_array_equal(n, model.gradient_norms("attn_norm_out", 1, agg=gsink.BatchAgg.SUM_THEN_NORM))
    assert _core.metric_gradient_sink_ratio(n, 0, 15) == model.gradient_sink_ratio(1, 0, 15, gsink.BatchAgg.SUM_THEN_NORM)
    x = model.activation("resid_out", 1)
    a = _core.metric_token_norms(x, agg=gsink.BatchAgg.PER_SEQUENCE)
    assert _core.metric_massive_activation_ratio(a) == model.massive_activation_ratio("resid_out", 1)
    r = _core.metric_branch_ratios(model.gradient("resid_in", 1), model.gradient("resid_mid", 1),
                                   model.gradient("attn_norm_out", 1))
    ref = model.branch_ratios(1, gsink.Branch.ATTN, gsink.BatchAgg.SUM_THEN_NORM)
    for got, want in zip(r, (ref["bloat"], ref["change"], ref["compress"])):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(gsink.OutOfRangeError):
        _core.metric_massive_activation_ratio(a[:8])
