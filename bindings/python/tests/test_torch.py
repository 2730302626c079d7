"""gsink.torch: attention_with_stats and VScale against pure-PyTorch references,
float64 gradcheck of the references and finite differences."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import gsink  # noqa: E402
import gsink.ops as go  # noqa: E402
import gsink.torch as gt  # noqa: E402


def ref_attention(q, k, v, scale=None):
    """(batch, seq, heads, d_head) causal attention in pure PyTorch, plus the probabilities."""
    b, t, h, dh = q.shape
    k = k.repeat_interleave(h // k.shape[2], dim=2)
    v = v.repeat_interleave(h // v.shape[2], dim=2)
    s = torch.einsum("bthd,bshd->bhts", q, k) * (scale or dh ** -0.5)
    mask = torch.ones(t, t, dtype=torch.bool).tril()
    a = torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.einsum("bhts,bshd->bthd", a, v), a


def ref_vscale(v, theta, d_model, sigma, mode, heads_out):
    """Written independently of gsink.torch.vscale_reference."""
    rep = heads_out // v.shape[-2]
    vv = torch.repeat_interleave(v, rep, dim=-2)
    if mode == "off":
        return vv
    c = d_model * v.shape[-1] * sigma * sigma * torch.exp(theta)[:, None]
    r = (vv ** 2).sum(-1, keepdim=True)
    full = vv * (r / (r + c))
    if mode == "full":
        return full
    # backward-only: value of vv, gradient of full (theta frozen)
    c0 = c.detach()
    f0 = vv * (r / (r + c0))
    return vv.detach() + (f0 - f0.detach())


def _qkv(b=2, t=13, h=4, kv=2, vh=2, dh=8, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    q = (torch.randn(b, t, h, dh, generator=g) * 1.5).to(dtype).requires_grad_()
    k = torch.randn(b, t, kv, dh, generator=g).to(dtype).requires_grad_()
    v = torch.randn(b, t, vh, dh, generator=g).to(dtype).requires_grad_()
    return q, k, v


@pytest.mark.parametrize("h,kv,vh", [(4, 4, 4), (4, 2, 2), (4, 2, 4), (3, 1, 1)])
def test_attention_forward_backward_vs_torch(h, kv, vh):
    q, k, v = _qkv(h=h, kv=kv, vh=vh, seed=h + kv + vh)
    out, st = gt.attention_with_stats(q, k, v, sink_window=5)
    q2, k2, v2 = (x.detach().double().requires_grad_() for x in (q, k, v))
    ref, a = ref_attention(q2, k2, v2)
    assert out.dtype == torch.float32 and st.col_mass.shape == (2, h, 13)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(st.col_mass.double(), a.sum(2), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(st.col_sq.double(), (a ** 2).sum(2), rtol=1e-5, atol=1e-6)
    win = torch.stack([a[:, :, s:s + 5, s].sum(-1) for s in range(13)], -1)
    torch.testing.assert_close(st.col_win.double(), win, rtol=1e-5, atol=1e-6)
    assert not st.col_mass.requires_grad
    dout = torch.randn(out.shape, generator=torch.Generator().manual_seed(9))
    (out * dout).sum().backward()
    (ref * dout.double()).sum().backward()
    for x, x2 in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(x.grad.double(), x2.grad, rtol=1e-5, atol=2e-6)
    # the reference's gradients are right (float64 gradcheck)
    qs, ks, vs = (x.detach()[:1, :5].double().requires_grad_() for x in (q, k, v))
    assert torch.autograd.gradcheck(lambda a_, b_, c_: ref_attention(a_, b_, c_)[0], (qs, ks, vs))


def test_attention_equals_gsink_ops_and_layouts():
    q, k, v = _qkv()
    out, st, lse = gt.attention_with_stats(q, k, v, sink_window=4, return_lse=True)
    o2, lse2, st2 = go.attention(q.detach().numpy(), k.detach().numpy(), v.detach().numpy(), sink_window=4)
    np.testing.assert_array_equal(out.detach().numpy(), o2)
    np.testing.assert_array_equal(lse.numpy(), lse2)
    for a, b in zip(st, st2):
        np.testing.assert_array_equal(a.numpy(), b)
    out_h, st_h = gt.attention_with_stats(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                          sink_window=4, layout="bhtd")
    torch.testing.assert_close(out_h.transpose(1, 2), out, rtol=0, atol=0)
    out_s, _ = gt.attention_with_stats(q, k, v, softmax_scale=0.5)
    torch.testing.assert_close(out_s.double(), ref_attention(q.double(), k.double(), v.double(), 0.5)[0],
                               rtol=1e-5, atol=1e-6)


def test_attention_finite_differences_and_float64():
    """float64 tensors are computed in float32 and returned as float64; the
    gradient agrees with central differences at fp32 tolerance."""
    q, k, v = _qkv(b=1, t=6, h=2, kv=1, vh=1, dh=4, seed=3, dtype=torch.float64)
    f = lambda a, b_, c: gt.attention_with_stats(a, b_, c)[0]  # noqa: E731
    out = f(q, k, v)
    assert out.dtype == torch.float64
    w = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    (out * w).sum().backward()
    eps = 1e-3
    for x in (q, k, v):
        flat = x.detach().view(-1)
        for i in range(0, flat.numel(), 5):
            orig = flat[i].item()
            flat[i] = orig + eps
            fp = (f(q.detach(), k.detach(), v.detach()) * w).sum().item()
            flat[i] = orig - eps
            fm = (f(q.detach(), k.detach(), v.detach()) * w).sum().item()
            flat[i] = orig
            num = (fp - fm) / (2 * eps)
            assert abs(x.grad.view(-1)[i].item() - num) < 2e-3 * max(1.0, abs(num)), (i, num)


@pytest.mark.parametrize("mode", ["full", "backward_only", "off"])
@pytest.mark.parametrize("kv,heads_out", [(2, 2), (2, 4)])
def test_vscale_vs_torch(mode, kv, heads_out):
    g = torch.Generator().manual_seed(4)
    v = (torch.randn(2, 7, kv, 8, generator=g) * 0.1).requires_grad_()
    layer = gt.VScale(kv, 8, d_model=32, sigma=0.05, mode=mode, heads_out=heads_out)
    with torch.no_grad():
        layer.theta.copy_(torch.randn(heads_out, generator=g) * 0.3)
    assert layer.theta.requires_grad == (mode == "full")
    out = layer(v)
    assert out.shape == (2, 7, heads_out, 8)
    v2 = v.detach().double().requires_grad_()
    th2 = layer.theta.detach().double().requires_grad_(mode == "full")
    ref = ref_vscale(v2, th2, 32, 0.05, mode, heads_out)
    torch.testing.assert_close(out.double(), ref, rtol=2e-6, atol=1e-7)
    dout = torch.randn(out.shape, generator=g)
    (out * dout).sum().backward()
    (ref * dout.double()).sum().backward()
    torch.testing.assert_close(v.grad.double(), v2.grad, rtol=1e-5, atol=1e-7)
    if mode == "full":
        torch.testing.assert_close(layer.theta.grad.double(), th2.grad, rtol=1e-5, atol=1e-7)
        assert torch.autograd.gradcheck(lambda a, b: ref_vscale(a, b, 32, 0.05, "full", heads_out),
                                        (v2[:1, :2].detach().requires_grad_(), th2.detach().requires_grad_()))
    else:
        assert layer.theta.grad is None
    # the module's pure-PyTorch backend agrees with the test's reference too
    torch_layer = gt.VScale(kv, 8, d_model=32, sigma=0.05, mode=mode, heads_out=heads_out, backend="torch")
    with torch.no_grad():
        torch_layer.theta.copy_(layer.theta)
    v3 = v.detach().requires_grad_()
    out3 = torch_layer(v3)
    (out3 * dout).sum().backward()
    torch.testing.assert_close(out3, out, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(v3.grad, v.grad, rtol=1e-5, atol=1e-7)


def test_vscale_finite_differences_full():
    g = torch.Generator().manual_seed(5)
    v = (torch.randn(3, 2, 4, generator=g, dtype=torch.float64) * 0.1).requires_grad_()
    th = (torch.randn(2, generator=g, dtype=torch.float64) * 0.2).requires_grad_()
    w = torch.randn(3, 2, 4, generator=g, dtype=torch.float64)
    (gt.vscale(v, th, 16, 0.05) * w).sum().backward()
    eps = 1e-3
    for x in (v, th):
        flat = x.detach().view(-1)
        for i in range(flat.numel()):
            orig = flat[i].item()
            flat[i] = orig + eps
            fp = (gt.vscale(v.detach(), th.detach(), 16, 0.05) * w).sum().item()
            flat[i] = orig - eps
            fm = (gt.vscale(v.detach(), th.detach(), 16, 0.05) * w).sum().item()
            flat[i] = orig
            num = (fp - fm) / (2 * eps)
            assert abs(x.grad.view(-1)[i].item() - num) < 1e-3 * max(1.0, abs(num))


def test_vscale_equals_the_model():
    """VScale with the model's theta reproduces the model's v_scaled and dL/dv."""
    m = gsink.Model("micro", seed=3, n_threads=1)
    m.vscale_enable(gsink.VScaleMode.FULL, sigma=0.05)
    th = np.asarray(m.theta)
    m.theta = np.linspace(-0.5, 0.5, th.size, dtype=np.float32).reshape(th.shape)
    tok = np.random.default_rng(0).integers(0, m.config.vocab_size, (2, 17), dtype=np.int32)
    m.forward(tok[:, :-1], tok[:, 1:])
    m.backward()
    c = m.config
    b, t = m.last_shape
    layer = gt.VScale(c.n_kv_heads, c.d_head, c.d_model, sigma=0.05)
    with torch.no_grad():
        layer.theta.copy_(torch.from_numpy(np.asarray(m.theta).reshape(c.n_layers, -1)[1]))
    v = torch.from_numpy(m.activation("v", 1).reshape(b, t, c.n_kv_heads, c.d_head)).requires_grad_()
    out = layer(v)
    np.testing.assert_array_equal(out.detach().numpy().reshape(b, t, -1), m.activation("v_scaled", 1))
    out.backward(torch.from_numpy(m.gradient("v_scaled", 1).reshape(out.shape)))
    np.testing.assert_array_equal(v.grad.numpy().reshape(b, t, -1), m.gradient("v", 1))
    np.testing.assert_allclose(layer.theta.grad.numpy(), m.theta_grad().reshape(c.n_layers, -1)[1], rtol=1e-5)
    m.close()


def test_errors():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match="floating-point"):
        gt.attention_with_stats(q.long(), k, v)
    with pytest.raises(ValueError, match="layout"):
        gt.attention_with_stats(q, k, v, layout="tbhd")
    with pytest.raises(ValueError, match="n_kv_heads, head_dim"):
        gt.VScale(2, 8, 32)(torch.zeros(3, 4, 8))
    with pytest.raises(ValueError, match="multiple"):
        gt.VScale(2, 8, 32, heads_out=3)
    with pytest.raises(ValueError, match="mode"):
        gt.VScale(2, 8, 32, mode="sometimes")
    with pytest.raises(gsink.UnsupportedError, match="CUDA"):
        gt.attention_with_stats(q, k, v, precision="bf16")  # CPU tensors: exact fp32 only
    with pytest.raises(gsink.UnsupportedError, match="CUDA"):
        gsink.ops.Ops(precision="tf32")
    out_fp32, _ = gt.attention_with_stats(q, k, v, precision="fp32")
    torch.testing.assert_close(out_fp32, gt.attention_with_stats(q, k, v)[0], rtol=0, atol=0)


def _cuda_backend_matches_cpu(to_dev, to_host, sync):
    """gsink.torch on the CUDA backend against the same calls on the CPU
    backend: attention output, column statistics and gradients (fp32), the
    V-scale layer's dv and dtheta, and the BF16 tensor-core kernels within
    bf16's bound. to_dev / to_host move tensors (and modules) to and from
    where the CUDA backend reads them; sync waits for queued work. Every
    CPU reference is computed before the first to_dev call."""
    q, k, v = _qkv(t=40, h=4, kv=2, vh=2, dh=16)
    out, st = gt.attention_with_stats(q, k, v, sink_window=8)
    dout = torch.randn(out.shape)
    (out * dout).sum().backward()
    grads = [x.grad.clone() for x in (q, k, v)]
    layer = gt.VScale(2, 16, 64, sigma=0.05)
    vv = (torch.randn(3, 5, 2, 16) * 0.1).requires_grad_()
    layer(vv).square().sum().backward()

    qc, kc, vc = (to_dev(x.detach()).requires_grad_() for x in (q, k, v))
    oc, stc = gt.attention_with_stats(qc, kc, vc, sink_window=8)
    (oc * to_dev(dout)).sum().backward()
    sync()
    torch.testing.assert_close(to_host(oc), out, rtol=1e-4, atol=1e-5)
    for a, b in zip(stc, st):
        torch.testing.assert_close(to_host(a), b, rtol=1e-4, atol=1e-5)
    for x, g in zip((qc, kc, vc), grads):
        torch.testing.assert_close(to_host(x.grad), g, rtol=1e-4, atol=1e-5)
    lc = to_dev(gt.VScale(2, 16, 64, sigma=0.05))
    vvc = to_dev(vv.detach()).requires_grad_()
    lc(vvc).square().sum().backward()
    sync()
    torch.testing.assert_close(to_host(vvc.grad), vv.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(to_host(lc.theta.grad), layer.theta.grad, rtol=1e-4, atol=1e-6)
    # the tensor-core kernels: within bf16's bound (4 unit roundoffs of the
    # output's scale), and not the exact result
    qb, kb, vb = (to_dev(x.detach()).requires_grad_() for x in (q, k, v))
    ob, stb = gt.attention_with_stats(qb, kb, vb, sink_window=8, precision="bf16")
    (ob * to_dev(dout)).sum().backward()
    sync()
    bound = 2.0 ** -6
    assert (to_host(ob) - out).abs().max() <= bound * 2 * out.abs().max() + 2.0 ** -8
    assert not torch.equal(to_host(ob), out)
    for x, g in zip((qb, kb, vb), grads):
        assert (to_host(x.grad) - g).abs().max() <= bound * 2 * g.abs().max() + 2.0 ** -8


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device for PyTorch")
def test_cuda_tensors_match_cpu():
    if gsink.device_count(gsink.DeviceKind.CUDA) == 0:
        pytest.skip("libgsink has no CUDA device")
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):   # queued on the current (non-default) stream
        _cuda_backend_matches_cpu(lambda x: x.cuda(), lambda x: x.detach().cpu(), torch.cuda.synchronize)


def _emulated_cuda():
    """True where libgsink's CUDA device is the host emulation of the
    cuda-emu suite (GSINK_CUDA_MODULE=tests/cuda/libgsink-cuda-emu.so), whose
    device memory is host memory, and PyTorch has no GPU."""
    return (not torch.cuda.is_available() and gsink.device_count(gsink.DeviceKind.CUDA) > 0
            and "host emulation" in gsink.device_describe(gsink.DeviceKind.CUDA))


@pytest.mark.skipif(not _emulated_cuda(), reason="needs the emulated CUDA module (suite cuda-emu)")
def test_emulated_cuda_backend_matches_cpu(monkeypatch):
    """The autograd Functions on CUDA ops handles, through the emulated CUDA
    module: CPU tensors stand in for device memory, so everything but
    PyTorch's CUDA tensors and stream (test_cuda_tensors_match_cpu on a GPU)
    runs: the CUDA backend's attention, statistics, V-scale and the BF16
    kernels under the layers' descriptors, pointers and gradient plumbing."""
    cpu_ops_for = gt.ops_for
    moved = False
    handles = {}  # precision -> CUDA ops handle

    def dev(x):
        nonlocal moved
        moved = True
        return x

    def ops_for(device, precision=None):
        # once dev() has moved the first tensor, every call (on those tensors
        # and on the gradients the Functions allocate like them) goes to a
        # CUDA handle; the references before it stay on the CPU
        if not moved:
            return cpu_ops_for(device, precision)
        if precision not in handles:
            handles[precision] = gsink.ops.Ops(device=gsink.DeviceKind.CUDA, precision=precision)
        return handles[precision]

    monkeypatch.setattr(gt, "ops_for", ops_for)
    try:
        _cuda_backend_matches_cpu(dev, lambda x: x.detach().clone(), lambda: None)
        assert {h.device for h in handles.values()} == {gsink.DeviceKind.CUDA}
        assert {h.precision for h in handles.values()} == {gsink.Precision.FP32, gsink.Precision.BF16}
    finally:
        for h in handles.values():
            h.close()
