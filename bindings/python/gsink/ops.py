"""gsink.ops: the library's layer operations and metrics on numpy arrays.

The model's own attention and V-scale kernels and its diagnostics code, run on
arrays you own (docs/embedding.md, "Python"). Inputs are converted to float32
C-contiguous arrays (copied only when needed; non-floating dtypes are refused
with TypeError, wrong shapes with ValueError); results are new float32 arrays.

Layouts (as the C API, gsink.h):
  q, out          (batch, seq, n_heads,    d_head)
  k               (batch, seq, n_kv_heads, d_head)
  v               (batch, seq, n_v_heads,  d_head), n_v_heads = n_kv_heads or n_heads
  lse, statistics (batch, n_heads, seq)

    import numpy as np, gsink.ops as go
    out, lse, st = go.attention(q, k, v, sink_window=64)
    rate = go.sink_rate(st.col_win, sink_window=64, s=0, eps=0.3)

Every function takes an optional `ops` (a gsink.ops.Ops CPU handle, e.g. with
a thread count); by default a shared CPU handle is used (calls on it from
several threads are serialised). For CUDA tensors use gsink.torch.
"""

import collections
import threading

import numpy as np

from ._core import (ALL_HEADS, BatchAgg, DeviceKind, Ops, VScaleMode, metric_branch_ratios,
                    metric_column_mean, metric_gradient_sink_ratio, metric_massive_activation_ratio,
                    metric_sink_rate, metric_sink_scores, metric_token_norms)

__all__ = [
    "Ops", "AttentionStats", "attention", "attention_backward", "attention_stats", "vscale",
    "vscale_backward", "token_norms", "gradient_sink_ratio", "massive_activation_ratio", "column_mean",
    "sink_scores", "sink_rate", "branch_ratios", "default_ops", "VScaleMode", "BatchAgg", "ALL_HEADS",
    "DeviceKind",
]

AttentionStats = collections.namedtuple("AttentionStats", ["col_mass", "col_sq", "col_win"])
AttentionStats.__doc__ = """Column statistics of the attention probabilities a_ts, each
(batch, n_heads, seq): col_mass[s] = M_s = sum_{t>=s} a_ts, col_sq[s] = S_s =
sum_{t>=s} a_ts^2, col_win[s] = sum_{t=s}^{s+T_eps-1} a_ts (T_eps = sink_window)."""

_default = None
_default_lock = threading.Lock()


def default_ops():
    """The shared CPU ops handle (created on first use, all CPU threads)."""
    global _default
    with _default_lock:
        if _default is None or _default.closed:
            _default = Ops()
        return _default


def _ops(ops):
    return default_ops() if ops is None else ops


# ---- operations ---------------------------------------------------------------

def attention(q, k, v, softmax_scale=0.0, sink_window=64, ops=None):
    """Causal attention forward: (out, lse, AttentionStats).

    out = softmax(scale q k^T + causal mask) v with scale = softmax_scale or
    1/sqrt(d_head); lse (batch, n_heads, seq) the rows' log-sum-exp, needed by
    attention_backward; the statistics are summed inside the kernel."""
    out, lse, m, sq, win = _ops(ops).attention_forward(q, k, v, softmax_scale, sink_window)
    return out, lse, AttentionStats(m, sq, win)


def attention_backward(q, k, v, out, lse, dout, softmax_scale=0.0, ops=None):
    """(dq, dk, dv) of causal attention from dout = dL/dout and the forward's
    out and lse (dk, dv have k's and v's heads: GQA groups are summed)."""
    return _ops(ops).attention_backward(q, k, v, out, lse, dout, softmax_scale)


def attention_stats(q, k, lse, softmax_scale=0.0, sink_window=64, ops=None):
    """AttentionStats recomputed from q, k and the forward's lse."""
    return AttentionStats(*_ops(ops).attention_stats(q, k, lse, softmax_scale, sink_window))


def vscale(v, theta, d_model, sigma=0.02, mode=VScaleMode.FULL, heads_out=None, ops=None):
    """V-scale forward of v (rows, heads_in, d_head) or (batch, seq, heads_in,
    d_head): out = phi(||v||^2) v, phi(r) = r/(r + C_j), C_j = d_model * d_head
    * sigma^2 * exp(theta[j]) (mode FULL); OFF and BACKWARD_ONLY copy v.
    heads_out (default heads_in) may be a multiple of heads_in: per-query-head
    scaling, out head j reading v head j // (heads_out // heads_in); theta has
    heads_out values (None allowed for OFF). The result has v's leading shape."""
    v = np.asarray(v)
    lead = v.shape[:-2]
    if v.ndim == 4:
        v = v.reshape(-1, v.shape[2], v.shape[3])
    out = _ops(ops).vscale_forward(v, theta, d_model, sigma, mode, heads_out)
    return out.reshape(lead + out.shape[1:])


def vscale_backward(v, theta, dout, d_model, sigma=0.02, mode=VScaleMode.FULL, ops=None):
    """(dv, dtheta) from dout = dL/d(vscale(v)): the V-scale Jacobian (FULL and
    BACKWARD_ONLY; identity for OFF), summed over expanded heads; dtheta
    (heads_out values) is zero except in FULL mode. Shapes as vscale."""
    v = np.asarray(v)
    dout = np.asarray(dout)
    lead = v.shape[:-2]
    if v.ndim == 4:
        v = v.reshape(-1, v.shape[2], v.shape[3])
    if dout.ndim == 4:
        dout = dout.reshape(-1, dout.shape[2], dout.shape[3])
    heads_out = dout.shape[1] if dout.ndim == 3 else v.shape[1]
    dtheta = np.zeros(heads_out, dtype=np.float32)
    dv = _ops(ops).vscale_backward(v, theta, dout, d_model, sigma, mode, dtheta=dtheta)
    return dv.reshape(lead + dv.shape[1:]), dtheta


# ---- metrics (pure functions, no handle) --------------------------------------

def token_norms(x, head=ALL_HEADS, agg=BatchAgg.SUM_THEN_NORM):
    """Token-wise norms (seq,) of x (batch, seq, width) or (batch, seq, heads,
    head_width): one head or the whole vector (head=ALL_HEADS). agg
    SUM_THEN_NORM ||sum_b x_bt|| (gradient norms, the paper's convention) or
    PER_SEQUENCE mean_b ||x_bt|| (the model's activation norms)."""
    return metric_token_norms(x, head, agg)


def gradient_sink_ratio(norms, s=0, t_e=31):
    """R_GS(s; T_e) = g[s] / ((1/T_e) sum_{0<=t<=T_e, t!=s} g[t]) from token-wise
    gradient norms g (token_norms of dL/d input_layernorm output)."""
    return metric_gradient_sink_ratio(norms, s, t_e)


def massive_activation_ratio(norms):
    """t0/early = norms[0] / mean(norms[1..15]) of PER_SEQUENCE activation norms."""
    return metric_massive_activation_ratio(norms)


def column_mean(stat):
    """Batch mean (heads, seq) of a column statistic (batch, heads, seq)."""
    return metric_column_mean(stat)


def sink_scores(col_win, sink_window, s=0):
    """alpha_s^h (heads,) = batch mean of col_win[:, h, s] / sink_window."""
    return metric_sink_scores(col_win, sink_window, s)


def sink_rate(col_win, sink_window, s=0, eps=0.3):
    """(1/H) sum_h [alpha_s^h > eps]."""
    return metric_sink_rate(col_win, sink_window, s, eps)


def branch_ratios(grad_in, grad_out, grad_normed, agg=BatchAgg.SUM_THEN_NORM):
    """(bloat, change, compress), each (seq,), of a residual branch from
    dL/dh_in, dL/d(branch out) and dL/d(normed input), each (batch, seq, width)."""
    return metric_branch_ratios(grad_in, grad_out, grad_normed, agg)
