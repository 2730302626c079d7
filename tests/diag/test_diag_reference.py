"""Reference tests of the diagnostics (suite 'reference').

Every metric returned by the public C API is recomputed here with numpy from
the raw activation / gradient tensors (gsink_get_activation /
gsink_get_gradient) and the weights (gsink_get_param), following the paper's
definitions (arXiv 2603.17771, eqs. (1)-(3), Sec. 3.1-3.2). The library is
loaded with ctypes from $GSINK_LIB (or the first build*/lib/libgsink.so).
"""
import ctypes as C
import glob
import json
import math
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _find_lib():
    path = os.environ.get("GSINK_LIB")
    if path:
        return path
    cands = sorted(glob.glob(os.path.join(ROOT, "build*", "lib", "libgsink.so")))
    if not cands:
        pytest.skip("libgsink.so not built (set GSINK_LIB)")
    return cands[0]


lib = C.CDLL(_find_lib())

OK, NULL_ARG, INVALID, CALL_ORDER, UNKNOWN_SITE, OUT_OF_RANGE, TOO_SMALL = 0, 1, 2, 7, 9, 11, 12
SITES = ["resid_in", "attn_norm_out", "q", "k", "v", "v_scaled", "attn_out", "resid_mid",
         "mlp_norm_out", "mlp_out", "resid_out", "z", "mlp_pre", "mlp_up", "mlp_post"]
S = {n: i for i, n in enumerate(SITES)}
SUM, PERSEQ = 0, 1


class Config(C.Structure):
    _fields_ = [("size", C.c_size_t), ("vocab_size", C.c_int32), ("d_model", C.c_int32),
                ("n_layers", C.c_int32), ("n_heads", C.c_int32), ("n_kv_heads", C.c_int32),
                ("d_head", C.c_int32), ("d_ff", C.c_int32), ("max_seq_len", C.c_int32),
                ("rms_eps", C.c_float), ("rope_theta", C.c_float), ("tie_embeddings", C.c_int32),
                ("init_std", C.c_float)]


class ModelOptions(C.Structure):
    _fields_ = [("size", C.c_size_t), ("device", C.c_int32), ("device_index", C.c_int32),
                ("n_threads", C.c_int32), ("seed", C.c_uint64)]


class DiagOptions(C.Structure):
    _fields_ = [("size", C.c_size_t), ("sink_eps", C.c_float), ("sink_window", C.c_int32),
                ("rgs_window", C.c_int32), ("sink_position", C.c_int32), ("batch_agg", C.c_int32)]


class VscaleOptions(C.Structure):
    _fields_ = [("size", C.c_size_t), ("mode", C.c_int32), ("sigma", C.c_float),
                ("learnable_theta", C.c_int32), ("per_query_head", C.c_int32)]


lib.gsink_last_error.restype = C.c_char_p
lib.gsink_model_errmsg.restype = C.c_char_p
FP = C.POINTER(C.c_float)
lib.gsink_sink_rate.argtypes = [C.c_void_p, C.c_int, C.c_int, C.c_float, FP]


def fptr(a):
    return a.ctypes.data_as(FP)


def check(st):
    assert st == OK, lib.gsink_last_error().decode()


class Model:
    """A random model after one forward+backward on random tokens."""

    def __init__(self, B=2, T=64, seed=3, sink_window=16, n_layers=2, d_model=48, n_heads=4,
                 n_kv_heads=2, d_head=12, vscale=0, sink=False):
        cfg = Config()
        lib.gsink_config_init_size(C.byref(cfg), C.c_size_t(C.sizeof(cfg)))
        cfg.vocab_size, cfg.d_model, cfg.n_layers = 97, d_model, n_layers
        cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_ff, cfg.max_seq_len = n_heads, n_kv_heads, d_head, 80, 128
        cfg.tie_embeddings = 0
        self.cfg = cfg
        mo = ModelOptions()
        lib.gsink_model_options_init_size(C.byref(mo), C.c_size_t(C.sizeof(mo)))
        mo.seed = seed
        mo.n_threads = 1
        self.h = C.c_void_p()
        check(lib.gsink_model_create(C.byref(cfg), C.byref(mo), C.byref(self.h)))
        rng = np.random.default_rng(seed)
        if sink:
            self._plant_sink()
        if vscale:
            vo = VscaleOptions()
            lib.gsink_vscale_options_init_size(C.byref(vo), C.c_size_t(C.sizeof(vo)))
            vo.mode = vscale
            check(lib.gsink_vscale_enable(self.h, C.byref(vo)))
        do = DiagOptions()
        lib.gsink_diag_options_init_size(C.byref(do), C.c_size_t(C.sizeof(do)))
        do.sink_window = sink_window
        check(lib.gsink_set_diag_options(self.h, C.byref(do)))
        self.B, self.T, self.W = B, T, sink_window
        toks = rng.integers(1, cfg.vocab_size, size=(B, T)).astype(np.int32)
        toks[:, 0] = 0
        tg = rng.integers(0, cfg.vocab_size, size=(B, T)).astype(np.int32)
        self.loss = C.c_float()
        check(lib.gsink_forward(self.h, toks.ctypes.data_as(C.POINTER(C.c_int32)),
                                tg.ctypes.data_as(C.POINTER(C.c_int32)), B, T, C.byref(self.loss)))
        check(lib.gsink_backward(self.h, 0))

    def _plant_sink(self):
        """Token 0 gets a massive embedding along e_0 and every token a shared
        e_1 component; in the slowest RoPE dimension of KV head 0, k reads e_0
        and q reads e_1, so query heads 0 (strongly) and 1 (weakly) attend to
        token 0 in every layer: an attention sink with a massive activation,
        to check the metrics away from near-uniform attention."""
        c = self.cfg
        emb = self.param("model.embed_tokens.weight")
        emb[:, 1] += 0.1
        emb[0] = 0.0
        emb[0, 0], emb[0, 1] = 1.0, 0.1
        self.set_param("model.embed_tokens.weight", emb)
        dim = c.d_head // 2 - 1
        for layer in range(c.n_layers):
            pre = f"model.layers.{layer}.self_attn."
            wk = self.param(pre + "k_proj.weight")
            wk[dim, 0] += 1.0
            self.set_param(pre + "k_proj.weight", wk)
            wq = self.param(pre + "q_proj.weight")
            wq[dim, 1] += 1.0
            wq[c.d_head + dim, 1] += 0.15
            self.set_param(pre + "q_proj.weight", wq)

    def __del__(self):
        if getattr(self, "h", None):
            lib.gsink_model_free(self.h)

    def dims(self, site):
        heads, width = C.c_int(), C.c_int()
        check(lib.gsink_site_dims(self.h, S[site], C.byref(heads), C.byref(width)))
        return heads.value, width.value

    def raw(self, layer, site, grad=False):
        heads, width = self.dims(site)
        out = np.empty((self.B, self.T, heads * width), np.float32)
        fn = lib.gsink_get_gradient if grad else lib.gsink_get_activation
        check(fn(self.h, layer, S[site], fptr(out), out.size))
        return out.astype(np.float64)

    def param(self, name):
        n = C.c_size_t()
        check(lib.gsink_param_count(self.h, C.byref(n)))
        for i in range(n.value):
            nm, nd, dims = C.c_char_p(), C.c_int(), (C.c_int64 * 2)()
            check(lib.gsink_param_info(self.h, C.c_size_t(i), C.byref(nm), C.byref(nd), dims))
            if nm.value.decode() == name:
                shape = tuple(dims[:nd.value])
                out = np.empty(shape, np.float32)
                check(lib.gsink_get_param(self.h, name.encode(), fptr(out), out.size))
                return out
        raise KeyError(name)

    def set_param(self, name, arr):
        arr = np.ascontiguousarray(arr, np.float32)
        check(lib.gsink_set_param(self.h, name.encode(), fptr(arr), arr.size))

    def vec(self, fn, *args, n=None):
        out = np.full(n or self.T, np.nan, np.float32)
        check(fn(self.h, *args, fptr(out), C.c_size_t(out.size)))
        return out.astype(np.float64)


# ---- independent numpy definitions -------------------------------------------

def norms(x, heads, head, agg):
    """x (B,T,heads*w): token-wise norms (head -1: whole vector)."""
    B, T, W = x.shape
    x = x.reshape(B, T, heads, W // heads)
    if head >= 0:
        x = x[:, :, head]
    x = x.reshape(B, T, -1)
    if agg == SUM:
        return np.linalg.norm(x.sum(0), axis=-1)
    return np.linalg.norm(x, axis=-1).mean(0)


def attention(q, k, H, KV, dh):
    """Causal softmax(q k^T / sqrt(dh)) per (b, h): (B,H,T,T)."""
    B, T, _ = q.shape
    q = q.reshape(B, T, H, dh).transpose(0, 2, 1, 3)
    k = k.reshape(B, T, KV, dh).transpose(0, 2, 1, 3)
    k = np.repeat(k, H // KV, axis=1)  # query head h reads key head h // (H/KV)
    z = q @ k.transpose(0, 1, 3, 2) / math.sqrt(dh)
    z = np.where(np.tril(np.ones((T, T), bool)), z, -np.inf)
    z -= z.max(-1, keepdims=True)
    a = np.exp(z)
    return a / a.sum(-1, keepdims=True)


def rope_cos_sin(T, dh, theta):
    inv = theta ** (-np.arange(0, dh, 2, dtype=np.float64) / dh)
    ang = np.arange(T)[:, None] * inv[None, :]
    ang = np.concatenate([ang, ang], -1)
    return np.cos(ang), np.sin(ang)


def rope(x, heads, dh, theta):
    """HF rotate_half RoPE on x (B,T,heads*dh)."""
    B, T, _ = x.shape
    x = x.reshape(B, T, heads, dh)
    c, s = rope_cos_sin(T, dh, theta)
    rot = np.concatenate([-x[..., dh // 2:], x[..., :dh // 2]], -1)
    return (x * c[None, :, None] + rot * s[None, :, None]).reshape(B, T, -1)


def rope_transpose(g, heads, dh, theta):
    """R^T g: the gradient with respect to the pre-RoPE vector."""
    B, T, _ = g.shape
    g = g.reshape(B, T, heads, dh)
    c, s = rope_cos_sin(T, dh, theta)
    gs = g * s[None, :, None]
    back = np.concatenate([gs[..., dh // 2:], -gs[..., :dh // 2]], -1)
    return (g * c[None, :, None] + back).reshape(B, T, -1)


def rmsnorm(x, gain, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * gain


# ---- fixtures ----------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return Model()


@pytest.fixture(scope="module")
def sink_model():
    return Model(seed=5, sink=True, vscale=1, B=3, T=72, sink_window=64)


MODELS = ["model", "sink_model"]


def close(a, b, rtol=2e-4, atol=1e-6):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


# ---- tests -------------------------------------------------------------------

@pytest.mark.parametrize("mname", MODELS)
def test_activation_norms_every_site_and_head(mname, request):
    m = request.getfixturevalue(mname)
    for layer in range(m.cfg.n_layers):
        for site in SITES:
            heads, _ = m.dims(site)
            x = m.raw(layer, site)
            for head in [-1] + list(range(heads)):
                got = m.vec(lib.gsink_get_activation_norms, layer, S[site], head)
                close(got, norms(x, heads, head, PERSEQ))


@pytest.mark.parametrize("mname", MODELS)
@pytest.mark.parametrize("agg", [SUM, PERSEQ])
def test_gradient_norms_every_site_and_head(mname, agg, request):
    m = request.getfixturevalue(mname)
    for layer in range(m.cfg.n_layers):
        for site in SITES:
            heads, _ = m.dims(site)
            g = m.raw(layer, site, grad=True)
            for head in [-1] + list(range(heads)):
                got = m.vec(lib.gsink_get_gradient_norms, layer, S[site], head, agg)
                close(got, norms(g, heads, head, agg), atol=1e-9)


def test_head_aggregate_is_root_sum_of_squares(model):
    # sqrt(sum_h ||x_h||^2) per (b,t), as SPEC section 2 states
    x = model.raw(0, "q")
    H = model.cfg.n_heads
    per = np.linalg.norm(x.reshape(model.B, model.T, H, -1), axis=-1)
    close(model.vec(lib.gsink_get_activation_norms, 0, S["q"], -1), np.sqrt((per ** 2).sum(-1)).mean(0))


@pytest.mark.parametrize("mname", MODELS)
def test_q_k_are_after_rope(mname, request):
    # Independent check of the stored q/k layout the Q/K/V split relies on.
    m = request.getfixturevalue(mname)
    c = m.cfg
    hn = m.raw(1, "attn_norm_out")
    wq = m.param("model.layers.1.self_attn.q_proj.weight").astype(np.float64)
    wk = m.param("model.layers.1.self_attn.k_proj.weight").astype(np.float64)
    close(m.raw(1, "q"), rope(hn @ wq.T, c.n_heads, c.d_head, c.rope_theta), rtol=1e-3, atol=1e-5)
    close(m.raw(1, "k"), rope(hn @ wk.T, c.n_kv_heads, c.d_head, c.rope_theta), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("mname", MODELS)
def test_attention_pattern_and_column_statistics(mname, request):
    m = request.getfixturevalue(mname)
    c = m.cfg
    for layer in range(c.n_layers):
        A = attention(m.raw(layer, "q"), m.raw(layer, "k"), c.n_heads, c.n_kv_heads, c.d_head)
        for b in range(m.B):
            for h in range(c.n_heads):
                got = m.vec(lib.gsink_attention_pattern, layer, b, h, n=m.T * m.T).reshape(m.T, m.T)
                close(got, A[b, h], atol=2e-6)
        # eq. (2): M_s = sum_{t>=s} a_ts, S_s = sum_{t>=s} a_ts^2, batch mean
        Mref = A.sum(2).mean(0)
        Sref = (A ** 2).sum(2).mean(0)
        for h in range(c.n_heads):
            M = np.empty(m.T, np.float32)
            Sq = np.empty(m.T, np.float32)
            check(lib.gsink_attention_column_mass(m.h, layer, h, fptr(M), fptr(Sq), C.c_size_t(m.T)))
            close(M, Mref[h], rtol=1e-4, atol=1e-5)
            close(Sq, Sref[h], rtol=1e-4, atol=1e-5)
        # eq. (1): alpha_s = (1/T_eps) sum_{t=s}^{s+T_eps-1} a_ts ; Sink = mean_h [alpha > eps]
        for s in [0, 1, m.T - m.W]:
            alpha = A[:, :, s:s + m.W, s].sum(-1).mean(0) / m.W
            got = m.vec(lib.gsink_sink_scores, layer, s, n=c.n_heads)
            close(got, alpha, rtol=1e-4, atol=1e-6)
            for eps in [0.0, 0.05, 0.3, float(np.median(alpha))]:
                rate = C.c_float()
                check(lib.gsink_sink_rate(m.h, layer, s, eps, C.byref(rate)))
                # skip thresholds within rounding of a score
                if np.all(np.abs(alpha - eps) > 1e-5):
                    assert rate.value == pytest.approx(float((alpha > eps).mean()))


@pytest.mark.parametrize("mname", MODELS)
@pytest.mark.parametrize("agg", [SUM, PERSEQ])
def test_gradient_sink_ratio(mname, agg, request):
    m = request.getfixturevalue(mname)
    for layer in range(m.cfg.n_layers):
        g = norms(m.raw(layer, "attn_norm_out", grad=True), 1, -1, agg)
        for s, te in [(0, 31), (0, 5), (3, 31), (40, 31), (2, m.T - 1)]:
            ref = g[s] / (sum(g[t] for t in range(te + 1) if t != s) / te)  # eq. (3)
            r = C.c_float()
            check(lib.gsink_gradient_sink_ratio(m.h, layer, s, te, agg, C.byref(r)))
            assert r.value == pytest.approx(ref, rel=2e-4)


@pytest.mark.parametrize("mname", MODELS)
@pytest.mark.parametrize("agg", [SUM, PERSEQ])
def test_branch_ratios(mname, agg, request):
    m = request.getfixturevalue(mname)
    for layer in range(m.cfg.n_layers):
        for branch, (hin, hout, hn) in enumerate([("resid_in", "resid_mid", "attn_norm_out"),
                                                  ("resid_mid", "resid_out", "mlp_norm_out")]):
            g_in, g_out, g_n = (m.raw(layer, s, grad=True) for s in (hin, hout, hn))
            if agg == SUM:
                g_in, g_out, g_n = g_in.sum(0, keepdims=True), g_out.sum(0, keepdims=True), g_n.sum(0, keepdims=True)
            g1, g2, g3 = g_out, g_n, g_in - g_out  # Sec. 3.2
            n = lambda v: np.linalg.norm(v, axis=-1)
            bloat = (n(g2) / n(g1)).mean(0)
            change = (n(g1 + g3) / n(g1)).mean(0)
            compress = (n(g3) / n(g2)).mean(0)
            out = [np.empty(m.T, np.float32) for _ in range(3)]
            check(lib.gsink_branch_ratios(m.h, layer, branch, agg, *map(fptr, out), C.c_size_t(m.T)))
            close(out[0], bloat, rtol=1e-3)
            close(out[1], change, rtol=1e-3)
            close(out[2], compress, rtol=1e-3)


@pytest.mark.parametrize("mname", MODELS)
def test_massive_activation_ratio(mname, request):
    m = request.getfixturevalue(mname)
    for layer in range(m.cfg.n_layers):
        for site in SITES:
            x = norms(m.raw(layer, site), 1, -1, PERSEQ)
            r = C.c_float()
            check(lib.gsink_massive_activation_ratio(m.h, layer, S[site], C.byref(r)))
            assert r.value == pytest.approx(x[0] / x[1:16].mean(), rel=2e-4)


@pytest.mark.parametrize("mname", MODELS)
@pytest.mark.parametrize("agg", [SUM, PERSEQ])
def test_qkv_gradient_split(mname, agg, request):
    m = request.getfixturevalue(mname)
    c = m.cfg
    for layer in range(c.n_layers):
        pre = f"model.layers.{layer}.self_attn."
        wq, wk, wv = (m.param(pre + p + "_proj.weight").astype(np.float64) for p in "qkv")
        dq = rope_transpose(m.raw(layer, "q", grad=True), c.n_heads, c.d_head, c.rope_theta)
        dk = rope_transpose(m.raw(layer, "k", grad=True), c.n_kv_heads, c.d_head, c.rope_theta)
        dv = m.raw(layer, "v", grad=True)
        gq, gk, gv = dq @ wq, dk @ wk, dv @ wv
        # the split is exact: g = gq + gk + gv at the post-RMSNorm input
        close(gq + gk + gv, m.raw(layer, "attn_norm_out", grad=True), rtol=1e-3, atol=1e-7)
        out = [np.empty(m.T, np.float32) for _ in range(3)]
        check(lib.gsink_qkv_gradient_split(m.h, layer, agg, *map(fptr, out), C.c_size_t(m.T)))
        for got, ref in zip(out, (gq, gk, gv)):
            close(got, norms(ref, 1, -1, agg), rtol=1e-3, atol=1e-9)
        assert out[0][0] == pytest.approx(0.0, abs=1e-9)  # Prop. 4: dL/dq_0 = 0


def test_report_json_matches_api(sink_model):
    m = sink_model
    js = C.c_char_p()
    check(lib.gsink_report_json(m.h, None, C.byref(js)))
    text = C.string_at(js).decode()
    lib.gsink_free(js)
    rep = json.loads(text)
    assert rep["schema"] == "gsink.report/1"
    c = m.cfg
    assert rep["model"]["n_layers"] == c.n_layers and rep["input"]["seq_len"] == m.T
    assert rep["options"]["sink_window"] == m.W and rep["options"]["batch_agg"] == "sum_then_norm"
    assert rep["vscale"]["mode"] == "full"
    assert len(rep["layers"]) == c.n_layers
    P = rep["options"]["profile_len"]
    rgs, rates = [], []
    for layer, L in enumerate(rep["layers"]):
        A = attention(m.raw(layer, "q"), m.raw(layer, "k"), c.n_heads, c.n_kv_heads, c.d_head)
        alpha = A[:, :, 0:m.W, 0].sum(-1).mean(0) / m.W
        rate = float((alpha > 0.3).mean())
        assert L["sink_rate"] == pytest.approx(rate)
        for h, H in enumerate(L["heads"]):
            assert H["sink_score"] == pytest.approx(alpha[h], rel=1e-4, abs=1e-6)
            assert H["column_mass"] == pytest.approx(A[:, h, :, 0].sum(-1).mean(), rel=1e-4)
            close(np.array(H["column_mass_profile"]), A[:, h].sum(1).mean(0)[:P], rtol=1e-4, atol=1e-5)
        g = norms(m.raw(layer, "attn_norm_out", grad=True), 1, -1, SUM)
        ref_rgs = g[0] / g[1:32].mean()
        assert L["gradient_sink_ratio"] == pytest.approx(ref_rgs, rel=2e-4)
        for site in ("resid_out", "mlp_out", "v"):
            x = norms(m.raw(layer, site), 1, -1, PERSEQ)
            assert L["massive_activation_ratio"][site] == pytest.approx(x[0] / x[1:16].mean(), rel=2e-4)
            close(np.array(L["activation_norms"][site]), x[:P], rtol=2e-4)
        v = norms(m.raw(layer, "v"), 1, -1, PERSEQ)
        assert L["value_norm"]["token0"] == pytest.approx(v[0], rel=2e-4)
        assert L["value_norm"]["early_mean"] == pytest.approx(v[1:16].mean(), rel=2e-4)
        for key in ("bloat", "change", "compress"):
            assert len(L["branch"]["attn"][key]) == P and len(L["branch"]["mlp"][key]) == P
        rgs.append(ref_rgs)
        rates.append(rate)
    assert rep["summary"]["sink_rate"]["mean"] == pytest.approx(np.mean(rates))
    assert rep["summary"]["gradient_sink_ratio"]["median"] == pytest.approx(np.median(rgs), rel=2e-4)


def test_report_short_sequence_gives_nulls():
    m = Model(B=1, T=12, sink_window=64)
    js = C.c_char_p()
    check(lib.gsink_report_json(m.h, None, C.byref(js)))
    rep = json.loads(C.string_at(js).decode())
    lib.gsink_free(js)
    assert rep["layers"][0]["sink_rate"] is None  # T_eps > T
    assert rep["layers"][0]["gradient_sink_ratio"] is None  # T_e = 31 >= T
    assert rep["layers"][0]["massive_activation_ratio"]["resid_out"] is None  # T < 16
    assert len(rep["notes"]) == 3


# ---- bad input (issue 3, point 7) ---------------------------------------------

def test_bad_input_statuses(model):
    m = model
    T = m.T
    buf = np.empty(T * T, np.float32)
    r = C.c_float()
    n = C.c_size_t(T)
    assert lib.gsink_get_activation_norms(m.h, 0, 99, -1, fptr(buf), n) == UNKNOWN_SITE
    assert lib.gsink_get_gradient_norms(m.h, 0, -1, -1, 0, fptr(buf), n) == UNKNOWN_SITE
    assert lib.gsink_massive_activation_ratio(m.h, 0, 15, C.byref(r)) == UNKNOWN_SITE
    assert lib.gsink_get_activation_norms(m.h, 2, 0, -1, fptr(buf), n) == OUT_OF_RANGE
    assert lib.gsink_get_activation_norms(m.h, -1, 0, -1, fptr(buf), n) == OUT_OF_RANGE
    assert lib.gsink_get_activation_norms(m.h, 0, S["q"], 4, fptr(buf), n) == OUT_OF_RANGE
    assert lib.gsink_get_activation_norms(m.h, 0, S["k"], 2, fptr(buf), n) == OUT_OF_RANGE
    assert lib.gsink_get_activation_norms(m.h, 0, S["resid_in"], 1, fptr(buf), n) == OUT_OF_RANGE
    assert lib.gsink_get_gradient_norms(m.h, 0, 0, -1, 7, fptr(buf), n) == INVALID
    assert lib.gsink_get_activation_norms(m.h, 0, 0, -1, fptr(buf), C.c_size_t(T - 1)) == TOO_SMALL
    assert lib.gsink_attention_column_mass(m.h, 0, 4, fptr(buf), None, n) == OUT_OF_RANGE
    assert lib.gsink_attention_column_mass(m.h, 0, 0, fptr(buf), None, C.c_size_t(3)) == TOO_SMALL
    assert lib.gsink_attention_pattern(m.h, 0, 2, 0, fptr(buf), C.c_size_t(T * T)) == OUT_OF_RANGE
    assert lib.gsink_attention_pattern(m.h, 0, 0, 0, fptr(buf), C.c_size_t(T * T - 1)) == TOO_SMALL
    assert lib.gsink_sink_scores(m.h, 0, T - m.W + 1, fptr(buf), C.c_size_t(8)) == OUT_OF_RANGE
    assert lib.gsink_sink_scores(m.h, 0, -1, fptr(buf), C.c_size_t(8)) == OUT_OF_RANGE
    assert lib.gsink_sink_scores(m.h, 0, 0, fptr(buf), C.c_size_t(3)) == TOO_SMALL
    assert lib.gsink_sink_rate(m.h, 0, T, 0.3, C.byref(r)) == OUT_OF_RANGE
    assert lib.gsink_sink_rate(m.h, 0, 0, float("nan"), C.byref(r)) == INVALID
    assert lib.gsink_gradient_sink_ratio(m.h, 0, 0, T, 0, C.byref(r)) == OUT_OF_RANGE
    assert b"T_e" in lib.gsink_model_errmsg(m.h)
    assert lib.gsink_gradient_sink_ratio(m.h, 0, 0, 0, 0, C.byref(r)) == OUT_OF_RANGE
    assert lib.gsink_gradient_sink_ratio(m.h, 0, T, 31, 0, C.byref(r)) == OUT_OF_RANGE
    assert lib.gsink_branch_ratios(m.h, 0, 2, 0, fptr(buf), None, None, n) == INVALID
    assert lib.gsink_branch_ratios(m.h, 0, 0, 0, fptr(buf), None, None, C.c_size_t(1)) == TOO_SMALL
    assert lib.gsink_qkv_gradient_split(m.h, 5, 0, fptr(buf), None, None, n) == OUT_OF_RANGE
    assert lib.gsink_gradient_sink_ratio(None, 0, 0, 31, 0, C.byref(r)) == NULL_ARG
    assert lib.gsink_report_json(m.h, None, None) == NULL_ARG
    # the handle is still usable and unchanged after all of that
    r2 = C.c_float()
    check(lib.gsink_gradient_sink_ratio(m.h, 0, 0, 31, 0, C.byref(r2)))
    assert lib.gsink_model_errmsg(m.h) == b""


def test_call_order():
    cfg = Config()
    lib.gsink_config_init_size(C.byref(cfg), C.c_size_t(C.sizeof(cfg)))
    h = C.c_void_p()
    check(lib.gsink_model_create(C.byref(cfg), None, C.byref(h)))
    try:
        buf = np.empty(4096, np.float32)
        r = C.c_float()
        n = C.c_size_t(4096)
        js = C.c_char_p()
        assert lib.gsink_get_activation_norms(h, 0, 0, -1, fptr(buf), n) == CALL_ORDER
        assert lib.gsink_attention_column_mass(h, 0, 0, fptr(buf), None, n) == CALL_ORDER
        assert lib.gsink_sink_rate(h, 0, 0, 0.3, C.byref(r)) == CALL_ORDER
        assert lib.gsink_report_json(h, None, C.byref(js)) == CALL_ORDER
        toks = np.arange(32, dtype=np.int32)
        check(lib.gsink_forward(h, toks.ctypes.data_as(C.POINTER(C.c_int32)), None, 1, 32, None))
        # forward only: activation metrics work, gradient metrics need backward
        check(lib.gsink_get_activation_norms(h, 0, 0, -1, fptr(buf), n))
        assert lib.gsink_get_gradient_norms(h, 0, 0, -1, 0, fptr(buf), n) == CALL_ORDER
        assert lib.gsink_gradient_sink_ratio(h, 0, 0, 5, 0, C.byref(r)) == CALL_ORDER
        assert lib.gsink_branch_ratios(h, 0, 0, 0, fptr(buf), None, None, n) == CALL_ORDER
        assert lib.gsink_qkv_gradient_split(h, 0, 0, fptr(buf), None, None, n) == CALL_ORDER
        assert lib.gsink_report_json(h, None, C.byref(js)) == CALL_ORDER
        assert b"backward" in lib.gsink_model_errmsg(h)
    finally:
        lib.gsink_model_free(h)


def test_vscale_sigma_must_be_positive(model):
    for sigma in (0.0, -0.02, float("nan")):
        vo = VscaleOptions()
        lib.gsink_vscale_options_init_size(C.byref(vo), C.c_size_t(C.sizeof(vo)))
        vo.sigma = sigma
        assert lib.gsink_vscale_enable(model.h, C.byref(vo)) == INVALID
    # still usable
    r = C.c_float()
    check(lib.gsink_gradient_sink_ratio(model.h, 0, 0, 31, 0, C.byref(r)))


# ---- command-line tool ---------------------------------------------------------

def _cli():
    path = os.environ.get("GSINK_CLI")
    if not path:
        cands = sorted(glob.glob(os.path.join(ROOT, "build*", "examples", "gsink-cli")))
        path = cands[0] if cands else None
    if not path or not os.path.exists(path):
        pytest.skip("gsink-cli not built (set GSINK_CLI)")
    return path


def test_cli_analyze_json_and_errors(tmp_path):
    import subprocess
    cli = _cli()
    ids = tmp_path / "ids.txt"
    ids.write_text(" ".join(str((7 * i) % 64) for i in range(2 * 48 + 1)))
    out = tmp_path / "r.json"
    p = subprocess.run([cli, "analyze", "--preset", "micro", "--tokens", str(ids), "--batch", "2",
                        "--seq", "48", "--sink-window", "32", "--json", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "sink_rate" in p.stdout and "R_GS" in p.stdout
    rep = json.loads(out.read_text())
    assert rep["schema"] == "gsink.report/1"
    assert rep["input"] == {**rep["input"], "batch": 2, "seq_len": 48}
    assert rep["options"]["sink_window"] == 32
    # binary int32 token file gives the same analysis as the text one
    ids_bin = tmp_path / "ids.bin"
    ids_bin.write_bytes(np.array([(7 * i) % 64 for i in range(2 * 48 + 1)], np.int32).tobytes())
    out2 = tmp_path / "r2.json"
    p = subprocess.run([cli, "analyze", "--preset", "micro", "--tokens", str(ids_bin), "--batch", "2",
                        "--seq", "48", "--sink-window", "32", "--json", str(out2), "-q"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(out2.read_text())["layers"] == rep["layers"]
    # usage errors: exit 2 and a message on stderr
    for args in (["analyze", "--bogus"], ["analyze", "--seq"], ["analyze", "--preset", "nope"],
                 ["analyze", "--preset", "micro", "--seq", "100000"], ["analyze", "--precision", "fp16"],
                 ["frobnicate"], []):
        p = subprocess.run([cli] + args, capture_output=True, text=True)
        assert p.returncode == 2 and p.stderr, args
    # runtime error: token id out of range -> exit 1
    bad = tmp_path / "bad.txt"
    bad.write_text("5 " * 47 + "9999 1")
    p = subprocess.run([cli, "analyze", "--preset", "micro", "--tokens", str(bad), "--seq", "48"],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "token" in p.stderr.lower()
    # reduced precision is CUDA-only: refused on the CPU with the library's message
    p = subprocess.run([cli, "analyze", "--preset", "micro", "--precision", "bf16", "-q"], capture_output=True, text=True)
    assert p.returncode == 1 and "BF16 precision needs a CUDA device" in p.stderr, p.stderr
    p = subprocess.run([cli, "info"], capture_output=True, text=True)
    assert p.returncode == 0 and "paper-0.1b" in p.stdout
    p = subprocess.run([cli, "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "analyze" in p.stdout
