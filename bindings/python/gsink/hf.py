"""gsink.hf: the paper's measurements for HuggingFace causal LMs.

    import gsink.hf, gsink.plots
    rep = gsink.hf.analyze(model, input_ids, targets)      # a gsink.report/1 dict
    gsink.plots.gradient_sink_distribution(rep, path="fig1.png")

A Recorder registers hooks on every decoder layer of a Llama-family model
(LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM, GemmaForCausalLM
(tested against the formulas; no native counterpart) and others with
model.model.layers[l].{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}) and keeps the activations
of the sites below with their gradients (retain_grad):

    resid_in       the layer's input (residual stream)
    attn_norm_out  input_layernorm output (h~; R_GS is measured on its gradient)
    v              v_proj output (the value states, head aggregate)
    z              the attention output before o_proj
    attn_out       o_proj output (the attention branch)
    resid_mid      the residual stream between the branches
    mlp_norm_out   post_attention_layernorm output
    mlp_pre        gate_proj output, mlp_up up_proj output, mlp_post down_proj input
    mlp_out        the MLP branch output
    resid_out      the layer's output

The attention column statistics come either from the model's attention
probabilities (attention="probs": the forward must return them,
output_attentions=True with attn_implementation="eager") or from the library's
kernel, gsink.torch.attention_with_stats, run in place of the model's eager
attention (attention="gsink": causal, no padding mask, no KV cache; tested
with transformers 4.40, written for the later attention interface too).

Every number is computed by the library's metric functions (gsink.ops) and
assembled into the native report (docs/report-schema.md): top-level model,
vscale, input, options and notes; per layer sink_rate, gradient_sink_ratio,
massive_activation_ratio, value_norm, heads (sink_score, is_sink,
column_mass, column_sq and their profiles), activation_norms,
gradient_norms, branch (attn and mlp Bloat/Change/Compress),
qkv_gradient_split; and summary. Not produced (they need q and k after
RoPE): the heads' q_norm/q_grad_norm and kv_heads. gsink.plots' Figures 1, 2
and 3 work on it.
"""

import inspect
import math
import sys

import numpy as np
import torch

from . import ops as go
from ._core import BatchAgg, _enum_arg, version

__all__ = ["Recorder", "analyze", "SITES", "decoder_layers"]

# the native site order (gsink_site), restricted to the sites recorded here
SITES = ("resid_in", "attn_norm_out", "v", "attn_out", "resid_mid", "mlp_norm_out", "mlp_out",
         "resid_out", "z", "mlp_pre", "mlp_up", "mlp_post")
_PROFILE_MAX = 64
_EARLY_LAST = 15


def decoder_layers(model):
    """The decoder layers (ModuleList) of a HF causal LM."""
    for path in ("model.layers", "transformer.layers", "layers"):
        m = model
        try:
            for part in path.split("."):
                m = getattr(m, part)
        except AttributeError:
            continue
        return m
    raise ValueError("cannot find the decoder layers of %s (expected model.model.layers)" % type(model).__name__)


def _heads(model):
    c = model.config
    h = c.num_attention_heads
    kv = getattr(c, "num_key_value_heads", None) or h
    dh = getattr(c, "head_dim", None) or c.hidden_size // h
    return h, kv, dh


def _rope(attn, q, k, v, position_ids, t):
    """q, k (batch, heads, seq, d_head) rotated as the model's own attention does
    (transformers 4.40: Llama passes position_ids to rotary_emb, Mistral and
    Qwen2 the sequence length)."""
    mod = sys.modules[type(attn).__module__]
    if position_ids is None:
        position_ids = torch.arange(t, device=q.device).unsqueeze(0)
    params = inspect.signature(attn.rotary_emb.forward).parameters
    if "position_ids" in params:
        cos, sin = attn.rotary_emb(v, position_ids)
        return mod.apply_rotary_pos_emb(q, k, cos, sin)
    cos, sin = attn.rotary_emb(v, seq_len=t)
    return mod.apply_rotary_pos_emb(q, k, cos, sin, position_ids)


def _attention_returns_pair():
    """transformers >= 4.48 attention modules return (output, weights); older
    ones (output, weights, past_key_value)."""
    import transformers
    try:
        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (4, 48)


class Recorder:
    """Hooks on a HF causal LM recording the sites (see the module) and the
    attention column statistics of each forward.

        with gsink.hf.Recorder(model, attention="probs") as rec:
            loss = rec.forward(input_ids, targets)      # forward + backward
            rep = rec.report()

    rec.forward runs the model (with output_attentions in "probs" mode), the
    mean cross-entropy over the targets (negative targets ignored) and its
    backward; you may instead run the model and backward yourself inside the
    with-block (pass output_attentions=True in "probs" mode) and give the loss
    to report(). Leaving the block removes the hooks (and restores the
    attention forwards)."""

    def __init__(self, model, attention="probs", sink_window=64):
        if attention not in ("probs", "gsink"):
            raise ValueError("attention must be 'probs' or 'gsink', got %r" % (attention,))
        self.model = model
        self.attention = attention
        self.sink_window = int(sink_window)
        self.layers = decoder_layers(model)
        self.n_heads, self.n_kv_heads, self.d_head = _heads(model)
        self._handles = []
        self._patched = []
        self.acts = [dict() for _ in self.layers]
        self.stats = [None] * len(self.layers)
        self.loss = None
        self._install()

    # -- hooks --------------------------------------------------------------

    def _keep(self, l, site, t):
        if isinstance(t, (tuple, list)):
            t = t[0]
        if t.requires_grad:
            t.retain_grad()
        self.acts[l][site] = t

    def _install(self):
        hk = self._handles
        for l, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            hk.append(layer.register_forward_pre_hook(lambda m, a, l=l: self._keep(l, "resid_in", a[0])))
            hk.append(layer.register_forward_hook(lambda m, a, o, l=l: self._keep(l, "resid_out", o)))
            hk.append(layer.input_layernorm.register_forward_hook(
                lambda m, a, o, l=l: self._keep(l, "attn_norm_out", o)))
            hk.append(attn.q_proj.register_forward_hook(lambda m, a, o, l=l: self._keep(l, "_q_proj", o)))
            hk.append(attn.k_proj.register_forward_hook(lambda m, a, o, l=l: self._keep(l, "_k_proj", o)))
            hk.append(attn.v_proj.register_forward_hook(lambda m, a, o, l=l: self._keep(l, "v", o)))
            hk.append(attn.o_proj.register_forward_pre_hook(lambda m, a, l=l: self._keep(l, "z", a[0])))
            hk.append(attn.o_proj.register_forward_hook(lambda m, a, o, l=l: self._keep(l, "attn_out", o)))
            hk.append(layer.post_attention_layernorm.register_forward_pre_hook(
                lambda m, a, l=l: self._keep(l, "resid_mid", a[0])))
            hk.append(layer.post_attention_layernorm.register_forward_hook(
                lambda m, a, o, l=l: self._keep(l, "mlp_norm_out", o)))
            if hasattr(mlp, "gate_proj"):
                hk.append(mlp.gate_proj.register_forward_hook(lambda m, a, o, l=l: self._keep(l, "mlp_pre", o)))
            if hasattr(mlp, "up_proj"):
                hk.append(mlp.up_proj.register_forward_hook(lambda m, a, o, l=l: self._keep(l, "mlp_up", o)))
            if hasattr(mlp, "down_proj"):
                hk.append(mlp.down_proj.register_forward_pre_hook(
                    lambda m, a, l=l: self._keep(l, "mlp_post", a[0])))
            hk.append(mlp.register_forward_hook(lambda m, a, o, l=l: self._keep(l, "mlp_out", o)))
            if self.attention == "probs":
                hk.append(attn.register_forward_hook(lambda m, a, o, l=l: self._probs(l, o)))
            else:
                self._patch(l, attn)

    def _probs(self, l, output):
        a = output[1] if isinstance(output, tuple) and len(output) > 1 else None
        if a is None:
            self.stats[l] = None
            return
        a = a.detach().to(torch.float32)               # (batch, heads, t, s)
        t = a.shape[-1]
        mass = a.sum(2)
        sq = (a * a).sum(2)
        w = self.sink_window
        idx_t = torch.arange(t, device=a.device)
        band = ((idx_t[:, None] >= idx_t[None, :]) & (idx_t[:, None] < idx_t[None, :] + w)).to(a.dtype)
        win = (a * band).sum(2)
        self.stats[l] = go.AttentionStats(mass.cpu().numpy(), sq.cpu().numpy(), win.cpu().numpy())

    def _patch(self, l, attn):
        from .torch import attention_with_stats
        rec, H, KV, DH = self, self.n_heads, self.n_kv_heads, self.d_head
        orig = attn.forward

        def forward(hidden_states, attention_mask=None, position_ids=None, past_key_value=None,
                    output_attentions=False, use_cache=False, cache_position=None, **kwargs):
            b, t, _ = hidden_states.shape
            q = attn.q_proj(hidden_states).view(b, t, H, DH).transpose(1, 2)
            k = attn.k_proj(hidden_states).view(b, t, KV, DH).transpose(1, 2)
            v = attn.v_proj(hidden_states).view(b, t, KV, DH).transpose(1, 2)
            pe = kwargs.get("position_embeddings")
            if pe is not None:   # newer transformers hand the rotary cos/sin to the attention
                q, k = sys.modules[type(attn).__module__].apply_rotary_pos_emb(q, k, *pe)
            else:
                q, k = _rope(attn, q, k, v, position_ids, t)
            out, st = attention_with_stats(q, k, v, sink_window=rec.sink_window, layout="bhtd")
            rec.stats[l] = go.AttentionStats(*(x.detach().cpu().numpy() for x in st))
            y = attn.o_proj(out.transpose(1, 2).reshape(b, t, H * DH).to(hidden_states.dtype))
            return (y, None) if two else (y, None, past_key_value)

        two = _attention_returns_pair()

        attn.forward = forward
        self._patched.append((attn, orig))

    def remove(self):
        """Removes the hooks and restores the attention forwards."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for attn, orig in self._patched:
            if attn.__dict__.get("forward") is not None:
                del attn.forward
        self._patched = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
        return False

    def clear(self):
        self.acts = [dict() for _ in self.layers]
        self.stats = [None] * len(self.layers)
        self.loss = None

    # -- running ------------------------------------------------------------

    def forward(self, input_ids, targets=None, backward=True):
        """Runs the model on input_ids (batch, seq); with targets (same shape,
        negative = ignored) the mean cross-entropy and, if backward, its
        gradients. Returns the loss (float) or None."""
        self.clear()
        self.model.zero_grad(set_to_none=True)
        ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        dev = next(self.model.parameters()).device
        kw = {"output_attentions": True} if self.attention == "probs" else {}
        with torch.set_grad_enabled(targets is not None and backward):
            logits = self.model(input_ids=ids.to(dev), use_cache=False, **kw).logits
            if targets is None:
                return None
            tg = torch.as_tensor(np.asarray(targets), dtype=torch.long).reshape(ids.shape).to(dev)
            tg = torch.where(tg < 0, torch.full_like(tg, -100), tg)
            loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                     tg.reshape(-1), ignore_index=-100)
            self.n_targets = int((tg >= 0).sum())
            if backward:
                loss.backward()
        self.loss = float(loss)
        return self.loss

    # -- the report ---------------------------------------------------------

    def _np(self, l, site, grad=False):
        t = self.acts[l].get(site)
        if t is None:
            return None
        if grad:
            t = t.grad
            if t is None:
                return None
        return t.detach().to(torch.float32).cpu().numpy()

    def report(self, sink_position=0, sink_eps=0.3, rgs_window=31, batch_agg="sum_then_norm", loss=None):
        """The gsink.report/1 dict of the last forward (and backward)."""
        agg = BatchAgg(_enum_arg(batch_agg, BatchAgg, "batch_agg"))
        x0 = self._np(0, "resid_in")
        if x0 is None:
            raise RuntimeError("nothing recorded: run a forward first")
        B, T = x0.shape[0], x0.shape[1]
        s, w = int(sink_position), self.sink_window
        if not 0 <= s < T:
            raise ValueError("sink_position %d out of range [0, %d)" % (s, T))
        P = min(T, _PROFILE_MAX)
        sink_ok = s + w <= T
        rgs_ok = 1 <= rgs_window < T
        early_ok = T > _EARLY_LAST
        if loss is None:
            loss = self.loss
        c = self.model.config
        notes = []
        if not sink_ok:
            notes.append("sink window T_eps=%d at position %d exceeds seq_len %d: sink scores and rates are null"
                         % (w, s, T))
        if not rgs_ok:
            notes.append("R_GS window T_e=%d needs 1 <= T_e < seq_len=%d: R_GS is null" % (rgs_window, T))
        if not early_ok:
            notes.append("seq_len < %d: t0/early ratios are null" % (_EARLY_LAST + 1))
        missing = [l for l, st in enumerate(self.stats) if st is None]
        if missing:
            notes.append("no attention statistics for layers %s (run with output_attentions=True)" % missing)
        rope_scaling = getattr(c, "rope_scaling", None)
        rep = {
            "schema": "gsink.report/1",
            "library_version": version(),
            "model": {"vocab_size": c.vocab_size, "d_model": c.hidden_size, "n_layers": len(self.layers),
                      "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads, "d_head": self.d_head,
                      "d_ff": c.intermediate_size, "max_seq_len": getattr(c, "max_position_embeddings", None),
                      "rms_eps": getattr(c, "rms_norm_eps", None), "rope_theta": getattr(c, "rope_theta", None),
                      "tie_embeddings": bool(getattr(c, "tie_word_embeddings", False)),
                      "arch": getattr(c, "model_type", "unknown"),
                      "qkv_bias": bool(getattr(self.layers[0].self_attn.q_proj, "bias", None) is not None),
                      "rope_scaling": (rope_scaling or {}).get("type", (rope_scaling or {}).get("rope_type",
                                                                                                 "default"))},
            "vscale": {"mode": "off", "sigma": 0.02, "learnable_theta": False, "per_query_head": False},
            "input": {"batch": B, "seq_len": T, "loss": loss, "n_targets": getattr(self, "n_targets", 0)},
            "options": {"sink_position": s, "sink_eps": float(np.float32(sink_eps)), "sink_window": w,
                        "rgs_window": int(rgs_window), "batch_agg": agg.name.lower(),
                        "early_tokens": [1, _EARLY_LAST], "profile_len": P},
            "notes": notes,
            "layers": [],
            "producer": "gsink.hf (%s attention)" % self.attention,
        }
        per_layer = {"sink_rate": [], "gradient_sink_ratio": [], "massive_activation_ratio_resid_out": [],
                     "massive_activation_ratio_mlp_out": []}
        for l in range(len(self.layers)):
            lay = self._layer(l, s, float(sink_eps), int(rgs_window), agg, P, sink_ok, rgs_ok, early_ok)
            rep["layers"].append(lay)
            per_layer["sink_rate"].append(lay["sink_rate"])
            per_layer["gradient_sink_ratio"].append(lay["gradient_sink_ratio"])
            per_layer["massive_activation_ratio_resid_out"].append(lay["massive_activation_ratio"].get("resid_out"))
            per_layer["massive_activation_ratio_mlp_out"].append(lay["massive_activation_ratio"].get("mlp_out"))
        rep["summary"] = {k: _summary(v) for k, v in per_layer.items()}
        return rep

    def _layer(self, l, s, eps, t_e, agg, P, sink_ok, rgs_ok, early_ok):
        lay = {"layer": l, "sink_rate": None, "gradient_sink_ratio": None}
        st = self.stats[l]
        if sink_ok and st is not None:
            lay["sink_rate"] = go.sink_rate(st.col_win, self.sink_window, s, eps)
        g = self._np(l, "attn_norm_out", grad=True)
        if rgs_ok and g is not None:
            lay["gradient_sink_ratio"] = _num(go.gradient_sink_ratio(go.token_norms(g, agg=agg), s, t_e))
        mar, act, grad = {}, {}, {}
        for site in SITES:
            x = self._np(l, site)
            if x is None:
                continue
            n = go.token_norms(x, agg=BatchAgg.PER_SEQUENCE)
            mar[site] = _num(go.massive_activation_ratio(n)) if early_ok else None
            act[site] = _prof(n, P)
            gx = self._np(l, site, grad=True)
            if gx is not None:
                grad[site] = _prof(go.token_norms(gx, agg=agg), P)
        lay["massive_activation_ratio"] = mar
        v = self._np(l, "v")
        if v is not None:
            n = go.token_norms(v, agg=BatchAgg.PER_SEQUENCE)
            lay["value_norm"] = {"token0": _num(n[0]),
                                 "early_mean": _num(np.mean(n[1:_EARLY_LAST + 1], dtype=np.float64))
                                 if early_ok else None}
        heads = []
        if st is not None:
            M, S = go.column_mean(st.col_mass), go.column_mean(st.col_sq)
            alpha = go.sink_scores(st.col_win, self.sink_window, s) if sink_ok else None
            for h in range(self.n_heads):
                a = _num(alpha[h]) if alpha is not None else None
                heads.append({"head": h, "kv_head": h // (self.n_heads // self.n_kv_heads), "sink_score": a,
                              "is_sink": None if a is None else bool(alpha[h] > np.float32(eps)),
                              "column_mass": _num(M[h, s]), "column_sq": _num(S[h, s]),
                              "column_mass_profile": _prof(M[h], P), "column_sq_profile": _prof(S[h], P)})
        lay["heads"] = heads
        lay["activation_norms"] = act
        lay["gradient_norms"] = grad
        branch = {}
        for name, gin, gout, gnorm in (("attn", "resid_in", "attn_out", "attn_norm_out"),
                                       ("mlp", "resid_mid", "mlp_out", "mlp_norm_out")):
            gs = [self._np(l, x, grad=True) for x in (gin, gout, gnorm)]
            if all(x is not None for x in gs):
                b, c, k = go.branch_ratios(*gs, agg=agg)
                branch[name] = {"bloat": _prof(b, P), "change": _prof(c, P), "compress": _prof(k, P)}
        lay["branch"] = branch
        # dL/d attn_norm_out split into the Q, K and V paths: the projections'
        # output gradients (RoPE's backward included) times their weights
        attn = self.layers[l].self_attn
        split = {}
        for name, site, lin in (("q", "_q_proj", attn.q_proj), ("k", "_k_proj", attn.k_proj),
                                ("v", "v", attn.v_proj)):
            gp = self._np(l, site, grad=True)
            if gp is not None:
                w = lin.weight.detach().to(torch.float32).cpu().numpy()
                split[name] = _prof(go.token_norms(gp @ w, agg=agg), P)
        if len(split) == 3:
            lay["qkv_gradient_split"] = split
        return lay


def _num(x):
    x = float(x)
    return x if math.isfinite(x) else None


def _prof(a, P):
    return [_num(x) for x in np.asarray(a)[:P]]


def _summary(vals):
    v = np.sort(np.array([x for x in vals if x is not None and math.isfinite(x)], dtype=np.float32))
    if v.size == 0:
        return {"mean": None, "median": None, "q1": None, "q3": None, "min": None, "max": None, "n_layers": 0}

    def q(p):
        pos = p * (v.size - 1)
        i = int(math.floor(pos))
        if i >= v.size - 1:
            return float(v[-1])
        f = pos - i
        return float(v[i]) * (1.0 - f) + float(v[i + 1]) * f

    return {"mean": float(np.sum(v, dtype=np.float64) / v.size), "median": q(0.5), "q1": q(0.25),
            "q3": q(0.75), "min": float(v[0]), "max": float(v[-1]), "n_layers": int(v.size)}


def analyze(model, input_ids, targets=None, attention="probs", sink_window=64, **report_options):
    """One forward (+ backward with targets) of a HF causal LM with the hooks,
    returning its gsink.report/1 dict (report_options: sink_position,
    sink_eps, rgs_window, batch_agg). Without targets the next tokens of
    input_ids are used: input_ids[:, :-1] -> input_ids[:, 1:]."""
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None]
    if targets is None:
        ids, targets = ids[:, :-1], ids[:, 1:]
    with Recorder(model, attention=attention, sink_window=sink_window) as rec:
        rec.forward(ids, targets)
        return rec.report(**report_options)
