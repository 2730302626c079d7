"""gsink.ops (public numpy API) against the model API and float64 references."""
import numpy as np
import pytest

import gsink
import gsink.ops as go


def ref_attention(q, k, v, scale=None, window=4):
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    b, t, h, dh = q.shape
    kv, vh = k.shape[2], v.shape[2]
    scale = 1.0 / np.sqrt(dh) if not scale else scale
    out = np.zeros((b, t, h, dh))
    lse = np.zeros((b, h, t))
    a = np.zeros((b, h, t, t))
    for hh in range(h):
        kk = k[:, :, hh // (h // kv)]
        vv = v[:, :, hh // (h // vh)]
        s = scale * np.einsum("btd,bsd->bts", q[:, :, hh], kk)
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        m = s.max(-1, keepdims=True)
        e = np.exp(s - m)
        z = e.sum(-1, keepdims=True)
        p = e / z
        a[:, hh] = p
        lse[:, hh] = (m + np.log(z))[..., 0]
        out[:, :, hh] = np.einsum("bts,bsd->btd", p, vv)
    mass = a.sum(2)
    sq = (a ** 2).sum(2)
    win = np.zeros_like(mass)
    for s_ in range(t):
        win[..., s_] = a[:, :, s_:s_ + window, s_].sum(-1)
    return out, lse, mass, sq, win


def ref_vscale(v, theta, d_model, sigma, heads_out):
    v = np.asarray(v, np.float64)
    rep = heads_out // v.shape[1]
    v = np.repeat(v, rep, axis=1)
    r = (v ** 2).sum(-1, keepdims=True)
    c = d_model * v.shape[-1] * sigma ** 2 * np.exp(np.asarray(theta, np.float64))[None, :, None]
    return r / (r + c) * v


@pytest.fixture(scope="module")
def model():
    m = gsink.Model("micro", seed=5, n_threads=1)
    m.vscale_enable(gsink.VScaleMode.FULL, sigma=0.05)
    th = np.asarray(m.theta)
    m.theta = np.linspace(-0.4, 0.6, th.size, dtype=np.float32).reshape(th.shape)
    m.set_diag_options(sink_window=4)
    rng = np.random.default_rng(1)
    tok = rng.integers(0, m.config.vocab_size, (2, 33), dtype=np.int32)
    m.forward(tok[:, :-1], tok[:, 1:])
    m.backward()
    yield m
    m.close()


def test_public_ops_equal_the_model(model):
    c = model.config
    b, t = model.last_shape
    h, kv, dh = c.n_heads, c.n_kv_heads, c.d_head
    for layer in range(c.n_layers):
        q = model.activation("q", layer).reshape(b, t, h, dh)
        k = model.activation("k", layer).reshape(b, t, kv, dh)
        v = model.activation("v", layer).reshape(b, t, kv, dh)
        theta = np.asarray(model.theta).reshape(c.n_layers, -1)[layer]
        vs = go.vscale(v, theta, c.d_model, sigma=0.05)
        assert vs.shape == v.shape
        np.testing.assert_allclose(vs.reshape(b, t, -1), model.activation("v_scaled", layer), rtol=2e-6, atol=1e-7)
        out, lse, st = go.attention(q, k, vs, sink_window=4)
        np.testing.assert_allclose(out.reshape(b, t, -1), model.activation("z", layer), rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(go.sink_scores(st.col_win, 4), model.sink_scores(layer, 0), rtol=2e-6)
        assert go.sink_rate(st.col_win, 4, 0, 0.2) == model.sink_rate(layer, 0, 0.2)
        for head in range(h):
            np.testing.assert_allclose(go.column_mean(st.col_mass)[head], model.column_mass(layer, head)[0],
                                       rtol=2e-6)
        st2 = go.attention_stats(q, k, lse, sink_window=4)
        for a, b_ in zip(st2, st):
            np.testing.assert_allclose(a, b_, rtol=2e-6, atol=1e-7)
        dz = model.gradient("z", layer).reshape(b, t, h, dh)
        dq, dk, dvs = go.attention_backward(q, k, vs, out, lse, dz)
        np.testing.assert_allclose(dq.reshape(b, t, -1), model.gradient("q", layer), rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(dk.reshape(b, t, -1), model.gradient("k", layer), rtol=2e-6, atol=1e-7)
        dv, dtheta = go.vscale_backward(v, theta, dvs, c.d_model, sigma=0.05)
        assert dv.shape == v.shape and dtheta.shape == (kv,)
        np.testing.assert_allclose(dv.reshape(b, t, -1), model.gradient("v", layer), rtol=2e-6, atol=1e-7)
        th_grad = np.asarray(model.theta_grad()).reshape(c.n_layers, -1)[layer]
        np.testing.assert_allclose(dtheta, th_grad, rtol=1e-5, atol=1e-7)


def test_public_metrics_equal_the_model(model):
    for layer in range(model.config.n_layers):
        g = model.gradient("attn_norm_out", layer)
        n = go.token_norms(g)
        np.testing.assert_array_equal(n, model.gradient_norms("attn_norm_out", layer,
                                                              agg=gsink.BatchAgg.SUM_THEN_NORM))
        assert go.gradient_sink_ratio(n, 0, 15) == model.gradient_sink_ratio(layer, 0, 15,
                                                                             gsink.BatchAgg.SUM_THEN_NORM)
        x = model.activation("resid_out", layer)
        a = go.token_norms(x, agg="per_sequence")
        assert go.massive_activation_ratio(a) == model.massive_activation_ratio("resid_out", layer)


@pytest.mark.parametrize("h,kv,vh", [(4, 4, 4), (4, 2, 2), (4, 2, 4), (6, 1, 1)])
def test_attention_against_float64_reference(h, kv, vh):
    rng = np.random.default_rng(h * 10 + kv + vh)
    b, t, dh = 2, 11, 8
    q = rng.standard_normal((b, t, h, dh)) * 2
    k = rng.standard_normal((b, t, kv, dh))
    v = rng.standard_normal((b, t, vh, dh))
    out, lse, st = go.attention(q, k, v, sink_window=4)      # float64 in: converted
    r = ref_attention(q, k, v, window=4)
    for got, want in zip((out, lse) + tuple(st), r):
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)
    # gradients against central differences of the float64 reference
    dout = rng.standard_normal(out.shape)
    dq, dk, dv = go.attention_backward(q, k, v, out, lse, dout)
    assert dk.shape == k.shape and dv.shape == v.shape
    f = lambda q_, k_, v_: float((ref_attention(q_, k_, v_)[0] * dout).sum())  # noqa: E731
    eps = 1e-6
    for arr, g, name in ((q, dq, "q"), (k, dk, "k"), (v, dv, "v")):
        for idx in [(0, 3, 0, 1), (1, 10, arr.shape[2] - 1, 7), (1, 0, 0, 0)]:
            p, m_ = arr.copy(), arr.copy()
            p[idx] += eps
            m_[idx] -= eps
            args_p = {"q": q, "k": k, "v": v}
            args_m = dict(args_p)
            args_p[name], args_m[name] = p, m_
            num = (f(**{"q_": args_p["q"], "k_": args_p["k"], "v_": args_p["v"]})
                   - f(**{"q_": args_m["q"], "k_": args_m["k"], "v_": args_m["v"]})) / (2 * eps)
            assert abs(g[idx] - num) <= 1e-4 * max(1.0, abs(num)), (name, idx, g[idx], num)


@pytest.mark.parametrize("mode", ["full", "backward_only", "off"])
@pytest.mark.parametrize("heads_in,heads_out", [(2, 2), (2, 4)])
def test_vscale_against_reference(mode, heads_in, heads_out):
    rng = np.random.default_rng(7)
    v = rng.standard_normal((9, heads_in, 8)).astype(np.float32) * 0.1
    theta = rng.standard_normal(heads_out).astype(np.float32) * 0.3
    out = go.vscale(v, theta, 32, sigma=0.05, mode=mode, heads_out=heads_out)
    if mode == "full":
        want = ref_vscale(v, theta, 32, 0.05, heads_out)
    else:
        want = np.repeat(v, heads_out // heads_in, axis=1)
    np.testing.assert_allclose(out, want, rtol=2e-6, atol=1e-7)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    dv, dtheta = go.vscale_backward(v, theta, dout, 32, sigma=0.05, mode=mode)
    if mode == "off":
        want_dv = dout.reshape(9, heads_in, -1, 8).sum(2)
        np.testing.assert_allclose(dv, want_dv, rtol=1e-6, atol=1e-7)
    else:  # the Jacobian of the FULL forward, by central differences in float64
        eps = 1e-6
        for idx in [(0, 0, 0), (4, heads_in - 1, 5), (8, 1, 7)]:
            p, m_ = v.astype(np.float64), v.astype(np.float64)
            p[idx] += eps
            m_[idx] -= eps
            num = ((ref_vscale(p, theta, 32, 0.05, heads_out) - ref_vscale(m_, theta, 32, 0.05, heads_out))
                   * dout).sum() / (2 * eps)
            assert abs(dv[idx] - num) <= 1e-4 * max(1.0, abs(num))
    if mode == "full":
        for j in range(heads_out):
            tp, tm = theta.astype(np.float64), theta.astype(np.float64)
            tp[j] += 1e-6
            tm[j] -= 1e-6
            num = ((ref_vscale(v, tp, 32, 0.05, heads_out) - ref_vscale(v, tm, 32, 0.05, heads_out))
                   * dout).sum() / 2e-6
            assert abs(dtheta[j] - num) <= 1e-4 * max(1.0, abs(num))
    else:
        assert not dtheta.any()


def test_validation_errors():
    q = np.zeros((1, 4, 2, 8), np.float32)
    with pytest.raises(TypeError, match="floating-point"):
        go.attention(q.astype(np.int32), q, q)
    with pytest.raises(ValueError, match="batch, seq, heads, d_head"):
        go.attention(q[0], q, q)
    with pytest.raises(ValueError, match="disagree"):
        go.attention(q, q[:, :3], q)
    with pytest.raises(gsink.InvalidArgumentError):
        go.attention(q, q[:, :, :1].repeat(3, 2)[:, :, :3], q)   # 2 heads, 3 kv heads
    with pytest.raises(ValueError, match="lse"):
        go.attention_stats(q, q, np.zeros((1, 2, 5), np.float32))
    with pytest.raises(ValueError, match="theta"):
        go.vscale(q, np.zeros(3, np.float32), 16)
    with pytest.raises(ValueError, match="mode"):
        go.vscale(q, np.zeros(2, np.float32), 16, mode="sideways")
    # non-contiguous input is accepted (copied)
    qt = np.asfortranarray(np.random.default_rng(0).standard_normal((1, 4, 2, 8)).astype(np.float32))
    out, _, _ = go.attention(qt, qt, qt)
    np.testing.assert_allclose(out, go.attention(np.ascontiguousarray(qt), qt, qt)[0])


def test_own_handle_and_cuda_guard():
    with go.Ops(n_threads=1) as ops:
        q = np.random.default_rng(2).standard_normal((1, 5, 2, 4)).astype(np.float32)
        np.testing.assert_array_equal(go.attention(q, q, q, ops=ops)[0], go.attention(q, q, q)[0])
        with pytest.raises(gsink.InvalidArgumentError):
            ops.set_stream(1234)
    with pytest.raises(gsink.ClosedError):
        go.attention(q, q, q, ops=ops)
    if gsink.device_count(gsink.DeviceKind.CUDA) == 0:
        with pytest.raises(gsink.GsinkError):
            go.Ops(device="cuda")


def test_import_gsink_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, gsink, gsink.ops; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
