"""The C optimizer against torch.optim.AdamW + clip_grad_norm_ + LambdaLR.

Gradients come from the library's own forward/backward on random tokens; the
same gradients are handed to PyTorch, and both sides update their own copy of
the weights. Parameters are compared tensor by tensor after every step.
"""
import ctypes
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")


class Config(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("vocab_size", ctypes.c_int32), ("d_model", ctypes.c_int32),
                ("n_layers", ctypes.c_int32), ("n_heads", ctypes.c_int32), ("n_kv_heads", ctypes.c_int32),
                ("d_head", ctypes.c_int32), ("d_ff", ctypes.c_int32), ("max_seq_len", ctypes.c_int32),
                ("rms_eps", ctypes.c_float), ("rope_theta", ctypes.c_float), ("tie_embeddings", ctypes.c_int32),
                ("init_std", ctypes.c_float)]


class ModelOptions(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("device", ctypes.c_int32), ("device_index", ctypes.c_int32),
                ("n_threads", ctypes.c_int32), ("seed", ctypes.c_uint64)]


class VscaleOptions(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("mode", ctypes.c_int32), ("sigma", ctypes.c_float),
                ("learnable_theta", ctypes.c_int32), ("per_query_head", ctypes.c_int32)]


class OptimizerOptions(ctypes.Structure):
    _fields_ = [("size", ctypes.c_size_t), ("lr", ctypes.c_float), ("min_lr", ctypes.c_float),
                ("warmup_steps", ctypes.c_int32), ("total_steps", ctypes.c_int32), ("beta1", ctypes.c_float),
                ("beta2", ctypes.c_float), ("eps", ctypes.c_float), ("weight_decay", ctypes.c_float),
                ("grad_clip", ctypes.c_float), ("accumulation_steps", ctypes.c_int32)]


GSINK_ERR_FORMAT = 15
GSINK_ERR_NON_FINITE = 19
GSINK_ERR_SHAPE_MISMATCH = 13


def make_model(lib, tie=1, vscale=1, seed=3):
    cfg = Config()
    cfg.size = ctypes.sizeof(Config)
    assert lib.gsink_config_preset_size(b"micro", ctypes.byref(cfg), ctypes.c_size_t(ctypes.sizeof(cfg))) == 0
    cfg.tie_embeddings = tie
    mo = ModelOptions()
    lib.gsink_model_options_init_size(ctypes.byref(mo), ctypes.c_size_t(ctypes.sizeof(mo)))
    mo.n_threads = 1
    mo.seed = seed
    model = ctypes.c_void_p()
    assert lib.gsink_model_create(ctypes.byref(cfg), ctypes.byref(mo), ctypes.byref(model)) == 0, \
        lib.gsink_last_error()
    if vscale:
        vo = VscaleOptions()
        lib.gsink_vscale_options_init_size(ctypes.byref(vo), ctypes.c_size_t(ctypes.sizeof(vo)))
        vo.mode = vscale
        assert lib.gsink_vscale_enable(model, ctypes.byref(vo)) == 0, lib.gsink_last_error()
    return model, cfg


def params_of(lib, model):
    """{name: (ndim, numpy array)} for every parameter except theta."""
    n = ctypes.c_size_t()
    assert lib.gsink_param_count(model, ctypes.byref(n)) == 0
    out = {}
    for i in range(n.value):
        name, ndim, dims = ctypes.c_char_p(), ctypes.c_int(), (ctypes.c_int64 * 2)()
        assert lib.gsink_param_info(model, i, ctypes.byref(name), ctypes.byref(ndim), ctypes.byref(dims)) == 0
        if b"v_scale_theta" in name.value:
            continue
        shape = tuple(dims[:ndim.value])
        a = np.empty(shape, np.float32)
        assert lib.gsink_get_param(model, name.value, a.ctypes.data, a.size) == 0
        out[name.value.decode()] = a
    return out


def grads_of(lib, model, names_shapes):
    g = {}
    for name, shape in names_shapes.items():
        a = np.empty(shape, np.float32)
        assert lib.gsink_get_param_grad(model, name.encode(), a.ctypes.data, a.size) == 0
        g[name] = a
    return g


def theta_of(lib, model, grad=False):
    n = ctypes.c_size_t()
    assert lib.gsink_vscale_theta_count(model, ctypes.byref(n)) == 0
    a = np.empty(n.value, np.float32)
    fn = lib.gsink_vscale_get_theta_grad if grad else lib.gsink_vscale_get_theta
    if n.value:
        assert fn(model, a.ctypes.data, a.size) == 0
    return a


def schedule(step, lr, min_lr, warmup, total):
    """The documented schedule (docs/training.md), written independently."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if total <= 0:
        return lr
    if step >= total:
        return min_lr
    p = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * p))


def make_opt(lib, model, **kw):
    oo = OptimizerOptions()
    lib.gsink_optimizer_options_init_size(ctypes.byref(oo), ctypes.c_size_t(ctypes.sizeof(oo)))
    for k, v in kw.items():
        setattr(oo, k, v)
    opt = ctypes.c_void_p()
    assert lib.gsink_optimizer_create(model, ctypes.byref(oo), ctypes.byref(opt)) == 0, lib.gsink_last_error()
    return opt, oo


def micro_batches(cfg, rng, B=2, T=12):
    x = rng.integers(0, cfg.vocab_size, size=(B, T), dtype=np.int32)
    y = rng.integers(0, cfg.vocab_size, size=(B, T), dtype=np.int32)
    return x, y


def test_defaults(lib):
    oo = OptimizerOptions()
    lib.gsink_optimizer_options_init_size(ctypes.byref(oo), ctypes.c_size_t(ctypes.sizeof(oo)))
    assert oo.size == ctypes.sizeof(OptimizerOptions)
    assert (oo.beta1, oo.eps, oo.grad_clip, oo.accumulation_steps) == (pytest.approx(0.9), pytest.approx(1e-8),
                                                                        1.0, 1)
    assert oo.beta2 == pytest.approx(0.95) and oo.weight_decay == pytest.approx(0.1)


def test_schedule_matches_formula(lib):
    model, _ = make_model(lib, vscale=0)
    opt, _ = make_opt(lib, model, lr=1e-3, min_lr=1e-4, warmup_steps=5, total_steps=50)
    for s in range(0, 60):
        assert lib.gsink_optimizer_lr_at(opt, s) == pytest.approx(schedule(s, 1e-3, 1e-4, 5, 50), rel=1e-6)
    lib.gsink_optimizer_free(opt)
    lib.gsink_model_free(model)


@pytest.mark.parametrize("tie,vscale,accum,clip", [(1, 1, 2, 0.05), (0, 0, 1, 1.0), (1, 0, 3, 0.0)])
def test_adamw_matches_torch(lib, tie, vscale, accum, clip):
    lr, min_lr, warmup, total, wd = 3e-3, 3e-4, 2, 6, 0.1
    model, cfg = make_model(lib, tie=tie, vscale=vscale)
    opt, _ = make_opt(lib, model, lr=lr, min_lr=min_lr, warmup_steps=warmup, total_steps=total,
                      weight_decay=wd, grad_clip=clip, accumulation_steps=accum)
    p0 = params_of(lib, model)
    if tie:
        assert "lm_head.weight" not in p0
    tparams = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in p0.items()}
    th0 = theta_of(lib, model) if vscale else np.zeros(0, np.float32)
    ttheta = torch.nn.Parameter(torch.from_numpy(th0.copy())) if th0.size else None
    decay = [p for p in tparams.values() if p.dim() == 2]
    no_decay = [p for p in tparams.values() if p.dim() != 2] + ([ttheta] if ttheta is not None else [])
    topt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, 0.95), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(topt, lambda s: schedule(s, lr, min_lr, warmup, total) / lr)
    rng = np.random.default_rng(0)
    shapes = {k: v.shape for k, v in p0.items()}
    clipped_any = False
    for step in range(total + 1):
        for _ in range(accum):
            x, y = micro_batches(cfg, rng)
            loss = ctypes.c_float()
            assert lib.gsink_forward(model, x.ctypes.data, y.ctypes.data, 2, 12, ctypes.byref(loss)) == 0
            assert lib.gsink_backward(model, 1) == 0  # accumulate
        g = grads_of(lib, model, shapes)
        for k, p in tparams.items():
            p.grad = torch.from_numpy(g[k] / accum)
        if ttheta is not None:
            ttheta.grad = torch.from_numpy(theta_of(lib, model, grad=True) / accum)
        allp = list(tparams.values()) + ([ttheta] if ttheta is not None else [])
        if clip > 0:
            tnorm = float(torch.nn.utils.clip_grad_norm_(allp, clip))
        else:
            tnorm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in allp)))
        clipped_any |= clip > 0 and tnorm > clip
        gn = ctypes.c_float()
        assert lib.gsink_optimizer_step(opt, ctypes.byref(gn)) == 0, lib.gsink_optimizer_errmsg(opt)
        assert gn.value == pytest.approx(tnorm, rel=1e-4)
        topt.step()
        sched.step()
        assert lib.gsink_optimizer_step_count(opt) == step + 1
        now = params_of(lib, model)
        for k, p in tparams.items():
            np.testing.assert_allclose(now[k], p.detach().numpy(), rtol=2e-5, atol=2e-7, err_msg=f"{k} step {step}")
        if ttheta is not None:
            np.testing.assert_allclose(theta_of(lib, model), ttheta.detach().numpy(), rtol=2e-5, atol=2e-7)
            # theta really moved (it is trained) and has no weight decay
            assert np.any(theta_of(lib, model) != 0)
        # gradients are zero after a step
        for k, v in grads_of(lib, model, shapes).items():
            assert not v.any(), k
    if clip and clip < 1:
        assert clipped_any  # the clipping branch was exercised
    lib.gsink_optimizer_free(opt)
    lib.gsink_model_free(model)


def test_non_finite_gradient_refused(lib):
    model, cfg = make_model(lib, vscale=1)
    opt, _ = make_opt(lib, model)
    rng = np.random.default_rng(1)
    x, y = micro_batches(cfg, rng)
    loss = ctypes.c_float()
    assert lib.gsink_forward(model, x.ctypes.data, y.ctypes.data, 2, 12, ctypes.byref(loss)) == 0
    assert lib.gsink_backward(model, 0) == 0
    assert lib.gsink_optimizer_step(opt, None) == 0
    # poison one gradient: a NaN gain makes every downstream gradient NaN
    before = params_of(lib, model)
    name = b"model.norm.weight"
    w = before["model.norm.weight"].copy()
    w[3] = np.nan
    assert lib.gsink_set_param(model, name, w.ctypes.data, w.size) == 0
    assert lib.gsink_forward(model, x.ctypes.data, y.ctypes.data, 2, 12, ctypes.byref(loss)) == 0
    assert lib.gsink_backward(model, 0) == 0
    before = params_of(lib, model)
    th = theta_of(lib, model)
    st = lib.gsink_optimizer_step(opt, None)
    assert st == GSINK_ERR_NON_FINITE
    assert b"NaN" in lib.gsink_optimizer_errmsg(opt)
    after = params_of(lib, model)
    for k in before:
        np.testing.assert_array_equal(after[k], before[k], err_msg=k)
    np.testing.assert_array_equal(theta_of(lib, model), th)
    assert lib.gsink_optimizer_step_count(opt) == 1
    lib.gsink_optimizer_free(opt)
    lib.gsink_model_free(model)


def test_state_roundtrip_and_corruption(lib, tmp_path):
    model, cfg = make_model(lib, vscale=1)
    opt, _ = make_opt(lib, model, total_steps=10, warmup_steps=1)
    rng = np.random.default_rng(2)
    batches = [micro_batches(cfg, rng) for _ in range(4)]
    loss = ctypes.c_float()

    def step(m, o, b):
        x, y = b
        assert lib.gsink_forward(m, x.ctypes.data, y.ctypes.data, 2, 12, ctypes.byref(loss)) == 0
        assert lib.gsink_backward(m, 0) == 0
        assert lib.gsink_optimizer_step(o, None) == 0

    for b in batches[:2]:
        step(model, opt, b)
    path = str(tmp_path / "opt.bin").encode()
    assert lib.gsink_optimizer_save(opt, path) == 0
    # a second model with the same weights and the restored state continues identically
    model2, _ = make_model(lib, vscale=1, seed=99)
    for k, v in params_of(lib, model).items():
        assert lib.gsink_set_param(model2, k.encode(), v.ctypes.data, v.size) == 0
    th = theta_of(lib, model)
    assert lib.gsink_vscale_set_theta(model2, th.ctypes.data, th.size) == 0
    opt2, _ = make_opt(lib, model2, total_steps=10, warmup_steps=1)
    assert lib.gsink_optimizer_load(opt2, path) == 0
    assert lib.gsink_optimizer_step_count(opt2) == 2
    for b in batches[2:]:
        step(model, opt, b)
        step(model2, opt2, b)
    a, b2 = params_of(lib, model), params_of(lib, model2)
    for k in a:
        np.testing.assert_array_equal(a[k], b2[k], err_msg=k)

    # corrupt: flip one byte in the moments -> rejected, state unchanged
    raw = bytearray(open(path, "rb").read())
    raw[100] ^= 0x40
    bad = tmp_path / "bad.bin"
    bad.write_bytes(bytes(raw))
    assert lib.gsink_optimizer_load(opt2, str(bad).encode()) == GSINK_ERR_FORMAT
    assert b"checksum" in lib.gsink_optimizer_errmsg(opt2)
    assert lib.gsink_optimizer_step_count(opt2) == 4
    trunc = tmp_path / "trunc.bin"
    trunc.write_bytes(bytes(raw[:-9]))
    assert lib.gsink_optimizer_load(opt2, str(trunc).encode()) == GSINK_ERR_FORMAT
    # mismatched model layout
    model3, _ = make_model(lib, tie=0, vscale=1)
    opt3, _ = make_opt(lib, model3)
    assert lib.gsink_optimizer_load(opt3, path) == GSINK_ERR_SHAPE_MISMATCH
    for o in (opt, opt2, opt3):
        lib.gsink_optimizer_free(o)
    for m in (model, model2, model3):
        lib.gsink_model_free(m)
