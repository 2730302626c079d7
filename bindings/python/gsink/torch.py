"""gsink.torch: the library's attention and V-scale kernels as PyTorch ops.

    import torch, gsink.torch as gt
    out, stats = gt.attention_with_stats(q, k, v)        # (batch, seq, heads, d_head)
    vs = gt.VScale(n_kv_heads=4, head_dim=64, d_model=512, sigma=0.02, mode="full")

Both are torch.autograd.Functions calling the library: on CPU tensors with
host pointers, on CUDA tensors with device pointers queued on the current
CUDA stream (torch.cuda.current_stream().cuda_stream), one gsink ops handle
per CUDA device. The library computes in float32: other floating dtypes are
converted and the results converted back. Works with PyTorch 1.13 and 2.x.

This module imports torch; `import gsink` alone does not.
"""

import threading

import torch

from . import _core
from . import _lib as L
from ._core import DeviceKind, Precision, VScaleMode
from .ops import AttentionStats

__all__ = ["attention_with_stats", "vscale", "VScale", "vscale_reference", "AttentionStats", "ops_for"]

_handles = {}
_handles_lock = threading.Lock()


def ops_for(device, precision=None):
    """The gsink ops handle used for tensors on `device` (torch.device or str)
    at `precision` (None or "fp32": exact fp32; "tf32", "bf16": tensor cores,
    CUDA only: UnsupportedError on the CPU)."""
    device = torch.device(device)
    prec = Precision.FP32 if precision is None else Precision(_core._enum_arg(precision, Precision, "precision"))
    if device.type == "cpu":
        if prec != Precision.FP32:
            raise _core.E.UnsupportedError("%s precision needs a CUDA device; the CPU computes in exact fp32"
                                           % prec.name, 16)
        from .ops import default_ops
        return default_ops()
    if device.type != "cuda":
        raise ValueError("gsink.torch supports CPU and CUDA tensors, not %s" % device.type)
    index = device.index if device.index is not None else torch.cuda.current_device()
    with _handles_lock:
        h = _handles.get((index, prec))
        if h is None or h.closed:
            h = _handles[(index, prec)] = _core.Ops(device=DeviceKind.CUDA, device_index=index, precision=prec)
        return h


class _Call:
    """Holds the handle's lock across set_stream and the operation."""

    def __init__(self, t, precision=None):
        self.ops = ops_for(t.device, precision)
        self.stream = torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else None

    def __enter__(self):
        self.ops._lock.acquire()
        if self.stream is not None and self.ops._stream != self.stream:
            self.ops.set_stream(self.stream)
        return self.ops

    def __exit__(self, *exc):
        self.ops._lock.release()
        return False


def _f32(t, name):
    if not isinstance(t, torch.Tensor):
        raise TypeError("%s must be a torch.Tensor, got %s" % (name, type(t).__name__))
    if not t.is_floating_point():
        raise TypeError("%s must be a floating-point tensor, got %s" % (name, t.dtype))
    return t.detach().to(torch.float32).contiguous()


def _ptr(t):
    return None if t is None else t.data_ptr()


def _same_device(*ts):
    dev = ts[0].device
    for t in ts[1:]:
        if t.device != dev:
            raise ValueError("tensors on different devices: %s and %s" % (dev, t.device))


# ---- attention ----------------------------------------------------------------

class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, softmax_scale, sink_window, precision):
        _same_device(q, k, v)
        dtype = q.dtype
        q32, k32, v32 = _f32(q, "q"), _f32(k, "k"), _f32(v, "v")
        d = _core._attn_desc(q32, k32, v32, softmax_scale, sink_window)
        st = (d.batch, d.n_heads, d.seq)
        out = torch.empty_like(q32)
        lse, m, sq, win = (torch.empty(st, dtype=torch.float32, device=q.device) for _ in range(4))
        with _Call(q32, precision) as ops:
            ops.raw_attention_forward(d, _ptr(q32), _ptr(k32), _ptr(v32), _ptr(out), _ptr(lse),
                                      _ptr(m), _ptr(sq), _ptr(win))
        ctx.save_for_backward(q32, k32, v32, out, lse)
        ctx.desc = d
        ctx.precision = precision
        ctx.dtypes = (q.dtype, k.dtype, v.dtype)
        ctx.mark_non_differentiable(lse, m, sq, win)
        return out.to(dtype), lse, m, sq, win

    @staticmethod
    def backward(ctx, dout, *unused):
        q32, k32, v32, out, lse = ctx.saved_tensors
        if dout is None:
            return None, None, None, None, None, None
        dout = _f32(dout, "dout")
        dq, dk, dv = torch.empty_like(q32), torch.empty_like(k32), torch.empty_like(v32)
        with _Call(q32, ctx.precision) as ops:
            ops.raw_attention_backward(ctx.desc, _ptr(q32), _ptr(k32), _ptr(v32), _ptr(out), _ptr(lse),
                                       _ptr(dout), _ptr(dq), _ptr(dk), _ptr(dv))
        tq, tk, tv = ctx.dtypes
        return dq.to(tq), dk.to(tk), dv.to(tv), None, None, None


def attention_with_stats(q, k, v, softmax_scale=None, sink_window=64, layout="bthd", return_lse=False,
                         precision=None):
    """Causal attention with the column statistics computed in the kernel.

    q (batch, seq, n_heads, d_head), k (batch, seq, n_kv_heads, d_head), v
    (batch, seq, n_v_heads, d_head) with n_v_heads = n_kv_heads or n_heads;
    layout="bhtd" takes and returns (batch, heads, seq, d_head) tensors (the
    HuggingFace layout) instead. Scores are softmax_scale * q.k (default
    1/sqrt(d_head)).

    precision: None / "fp32" (exact), "tf32" or "bf16" (the tensor-core
    kernels of the model's TF32 / BF16 math; CUDA tensors only).

    Returns (out, AttentionStats(col_mass, col_sq, col_win)) [+ lse if
    return_lse], statistics and lse (batch, n_heads, seq) float32. out is
    differentiable with respect to q, k and v (the library's backward); the
    statistics are measurements and carry no gradient."""
    if layout not in ("bthd", "bhtd"):
        raise ValueError("layout must be 'bthd' or 'bhtd', got %r" % (layout,))
    if layout == "bhtd":
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    out, lse, m, sq, win = _Attention.apply(q, k, v, 0.0 if softmax_scale is None else float(softmax_scale),
                                            int(sink_window), precision)
    if layout == "bhtd":
        out = out.transpose(1, 2)
    stats = AttentionStats(m, sq, win)
    return (out, stats, lse) if return_lse else (out, stats)


# ---- V-scale ------------------------------------------------------------------

def _vscale_desc(v, heads_out, d_model, sigma, mode):
    d = L.VScaleDesc()
    _core._lib.gsink_vscale_desc_init_size(_core.ctypes.byref(d), _core.ctypes.sizeof(d))
    d.mode = _core._enum_arg(mode, VScaleMode, "mode")
    d.n_rows, d.heads_in, d.d_head = (_core._cint(int(x), "v shape") for x in v.shape)
    d.heads_out = _core._cint(int(heads_out), "heads_out")
    d.d_model = _core._cint(int(d_model), "d_model")
    d.sigma = float(sigma)
    return d


class _VScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, theta, d_model, sigma, mode, heads_out):
        dtype = v.dtype
        if theta is not None:
            _same_device(v, theta)
        v32 = _f32(v, "v")
        lead = v32.shape[:-2]
        v3 = v32.reshape(-1, v32.shape[-2], v32.shape[-1])
        th = None if theta is None else _f32(theta, "theta").reshape(-1)
        if th is not None and th.numel() != heads_out:
            raise ValueError("theta must have %d values (heads_out), got %d" % (heads_out, th.numel()))
        d = _vscale_desc(v3, heads_out, d_model, sigma, mode)
        out = torch.empty((v3.shape[0], heads_out, v3.shape[2]), dtype=torch.float32, device=v.device)
        with _Call(v3) as ops:
            ops.raw_vscale_forward(d, _ptr(v3), _ptr(th), _ptr(out))
        ctx.save_for_backward(v3, th if th is not None else torch.empty(0))
        ctx.has_theta = th is not None
        ctx.desc = d
        ctx.lead = lead
        ctx.dtypes = (v.dtype, None if theta is None else theta.dtype, None if theta is None else theta.shape)
        return out.reshape(tuple(lead) + (heads_out, v3.shape[2])).to(dtype)

    @staticmethod
    def backward(ctx, dout):
        v3, th = ctx.saved_tensors
        th = th if ctx.has_theta else None
        d = ctx.desc
        dout = _f32(dout, "dout").reshape(v3.shape[0], d.heads_out, v3.shape[2])
        dv = torch.empty_like(v3)
        want_theta = ctx.has_theta and ctx.needs_input_grad[1]
        dth = torch.zeros(d.heads_out, dtype=torch.float32, device=v3.device) if want_theta else None
        with _Call(v3) as ops:
            ops.raw_vscale_backward(d, _ptr(v3), _ptr(th), _ptr(dout), _ptr(dv), _ptr(dth))
        tv, tth, th_shape = ctx.dtypes
        dv = dv.reshape(tuple(ctx.lead) + tuple(v3.shape[1:])).to(tv)
        return dv, (dth.reshape(th_shape).to(tth) if want_theta else None), None, None, None, None


def vscale(v, theta, d_model, sigma=0.02, mode="full", heads_out=None):
    """V-scale of v (..., heads_in, d_head) through the library: phi(||v||^2) v
    with phi(r) = r/(r + C_j), C_j = d_model * d_head * sigma^2 * exp(theta[j])
    (mode "full"); "backward_only" returns v unchanged but back-propagates
    through the V-scale Jacobian (no theta gradient); "off" is the identity.
    heads_out (default heads_in) may be a multiple of heads_in (per query
    head). Differentiable in v and, in "full" mode, theta."""
    heads_out = v.shape[-2] if heads_out is None else int(heads_out)
    return _VScale.apply(v, theta, int(d_model), float(sigma), mode, heads_out)


def vscale_reference(v, theta, d_model, sigma=0.02, mode="full", heads_out=None):
    """The same V-scale in pure PyTorch (autograd), for comparison."""
    mode = VScaleMode(_core._enum_arg(mode, VScaleMode, "mode"))
    heads_in = v.shape[-2]
    heads_out = heads_in if heads_out is None else int(heads_out)
    if heads_out != heads_in:
        v = v.repeat_interleave(heads_out // heads_in, dim=-2)
    if mode == VScaleMode.OFF:
        return v

    def f(v_, th_):
        r = (v_ * v_).sum(-1, keepdim=True)
        c = d_model * v_.shape[-1] * sigma ** 2 * torch.exp(th_).reshape(heads_out, 1)
        return r / (r + c) * v_

    if mode == VScaleMode.FULL:
        return f(v, theta)
    y = f(v, theta.detach())
    return y - y.detach() + v.detach() if v.requires_grad else v


class VScale(torch.nn.Module):
    """The paper's V-scale layer: v (..., n_kv_heads, head_dim) ->
    phi(||v||^2) v per head, C_j = d_model * head_dim * sigma^2 * exp(theta_j).

    VScale(n_kv_heads, head_dim, d_model, sigma=0.02, mode="full",
    learnable=True, heads_out=None, backend="gsink"): theta (heads_out
    values, initialised to 0) is a Parameter, trained in "full" mode when
    learnable, frozen otherwise; heads_out = n_heads gives the per-query-head
    variant (the output then has heads_out heads). backend="torch" runs the
    same math in pure PyTorch (vscale_reference)."""

    def __init__(self, n_kv_heads, head_dim, d_model, sigma=0.02, mode="full", learnable=True,
                 heads_out=None, backend="gsink"):
        super().__init__()
        self.mode = VScaleMode(_core._enum_arg(mode, VScaleMode, "mode"))
        if sigma <= 0:
            raise ValueError("sigma must be > 0, got %r" % (sigma,))
        if backend not in ("gsink", "torch"):
            raise ValueError("backend must be 'gsink' or 'torch', got %r" % (backend,))
        self.n_kv_heads, self.head_dim, self.d_model = int(n_kv_heads), int(head_dim), int(d_model)
        self.heads_out = self.n_kv_heads if heads_out is None else int(heads_out)
        if self.heads_out % self.n_kv_heads:
            raise ValueError("heads_out (%d) must be a multiple of n_kv_heads (%d)"
                             % (self.heads_out, self.n_kv_heads))
        self.sigma = float(sigma)
        self.backend = backend
        self.theta = torch.nn.Parameter(torch.zeros(self.heads_out),
                                        requires_grad=bool(learnable) and self.mode == VScaleMode.FULL)

    def forward(self, v):
        if v.shape[-2:] != (self.n_kv_heads, self.head_dim):
            raise ValueError("v must end in (n_kv_heads, head_dim) = (%d, %d), got %s"
                             % (self.n_kv_heads, self.head_dim, tuple(v.shape)))
        fn = vscale if self.backend == "gsink" else vscale_reference
        return fn(v, self.theta, self.d_model, self.sigma, self.mode, self.heads_out)

    def extra_repr(self):
        return "n_kv_heads=%d, head_dim=%d, d_model=%d, sigma=%g, mode=%s, heads_out=%d, backend=%s" % (
            self.n_kv_heads, self.head_dim, self.d_model, self.sigma, self.mode.name.lower(), self.heads_out,
            self.backend)
