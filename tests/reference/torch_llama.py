"""Independent PyTorch implementation of the libgsink model (SPEC section 1 and
the V-scale layer of section 3), written from the formulas, for reference
tests of forward values and autograd gradients.

Everything is computed in float64 by default so that it is a clean reference
for the library's float32 results. Every activation site of SPEC section 2 is
a separate tensor with retain_grad(), so after backward() both its value and
dL/dsite are available.
"""

import math

import numpy as np
import torch

# Site names in gsink_site order (include/gsink.h).
SITES = ("resid_in", "attn_norm_out", "q", "k", "v", "v_scaled", "attn_out", "resid_mid",
         "mlp_norm_out", "mlp_out", "resid_out", "z", "mlp_pre", "mlp_up", "mlp_post")

CONFIG_KEYS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_head", "d_ff",
               "rms_eps", "rope_theta", "tie_embeddings")
# Architecture fields (gsink_config since the architecture table) with the
# library's defaults: plain Llama.
ARCH_DEFAULTS = dict(max_seq_len=2048, qkv_bias=False, rope_scaling="default", rope_factor=1.0,
                     rope_low_freq_factor=1.0, rope_high_freq_factor=4.0, rope_original_max_pos=0,
                     rope_beta_fast=32.0, rope_beta_slow=1.0, rope_attention_factor=0.0,
                     rope_truncate=True, arch="llama", qk_norm=False, rope_dims=0,
                     rope_interleaved=False, sandwich_norm=False)
# Architectures whose HF files fuse gate and up into mlp.gate_up_proj (GLM).
FUSED_GATE_UP = ("glm", "glm4")


def param_names(cfg, with_theta=False):
    """HF LlamaForCausalLM parameter names, in the library's order."""
    names = ["model.embed_tokens.weight"]
    for l in range(cfg["n_layers"]):
        p = "model.layers.%d." % l
        names += [p + "input_layernorm.weight", p + "self_attn.q_proj.weight",
                  p + "self_attn.k_proj.weight", p + "self_attn.v_proj.weight",
                  p + "self_attn.o_proj.weight", p + "post_attention_layernorm.weight"]
        if cfg.get("arch") in FUSED_GATE_UP:
            names += [p + "mlp.gate_up_proj.weight"]
        else:
            names += [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"]
        names += [p + "mlp.down_proj.weight"]
        if cfg.get("qkv_bias"):
            names += [p + "self_attn.q_proj.bias", p + "self_attn.k_proj.bias",
                      p + "self_attn.v_proj.bias"]
        if cfg.get("qk_norm"):
            names += [p + "self_attn.q_norm.weight", p + "self_attn.k_norm.weight"]
        if cfg.get("sandwich_norm"):
            names += [p + "post_self_attn_layernorm.weight", p + "post_mlp_layernorm.weight"]
        if with_theta:
            names.append(p + "self_attn.v_scale_theta")
    names.append("model.norm.weight")
    if not cfg["tie_embeddings"]:
        names.append("lm_head.weight")
    return names


def rms_norm(x, gain, eps):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * gain


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_inv_freq(cfg):
    """Inverse frequencies and the cos/sin factor of HF transformers' rope
    types (modeling_rope_utils: default, linear, llama3, yarn), in float64,
    written from HF's formulas."""
    c = dict(ARCH_DEFAULTS, **cfg)
    # HF: dim = int(head_dim * partial_rotary_factor), the rotated part of a head
    dim, base = c["rope_dims"] or c["d_head"], float(c["rope_theta"])
    inv = 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))
    kind, factor = c["rope_scaling"], float(c["rope_factor"])
    orig = c["rope_original_max_pos"] or c["max_seq_len"]
    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return inv / factor, 1.0
    if kind == "llama3":
        lo, hi = c["rope_low_freq_factor"], c["rope_high_freq_factor"]
        wavelen = 2 * math.pi / inv
        out = np.where(wavelen > orig / lo, inv / factor, inv)
        smooth = (orig / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * out / factor + smooth * out
        medium = ~(wavelen < orig / hi) & ~(wavelen > orig / lo)
        return np.where(medium, smoothed, out), 1.0
    if kind == "yarn":
        def corr_dim(rot):
            return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))
        low, high = corr_dim(c["rope_beta_fast"]), corr_dim(c["rope_beta_slow"])
        if c["rope_truncate"]:
            low, high = math.floor(low), math.ceil(high)
        low, high = max(low, 0), min(high, dim - 1)
        if low == high:
            high += 0.001
        ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
        extra = 1 - ramp
        inv = (inv / factor) * (1 - extra) + inv * extra
        att = c["rope_attention_factor"] or (1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0)
        return inv, att
    raise ValueError("unknown rope_scaling %r" % kind)


def rope_cos_sin(T, d_head, base, dtype, cfg=None):
    """HF LlamaRotaryEmbedding: inv_freq_i = base^(-2i/d_head) (or a scaled
    table, cfg's rope_scaling), angle = t*inv_freq, duplicated over both
    halves; cos and sin times the attention factor (yarn)."""
    if cfg is None:
        inv, att = 1.0 / (base ** (np.arange(0, d_head, 2, dtype=np.float64) / d_head)), 1.0
    else:
        inv, att = rope_inv_freq(cfg)
    inv_freq = torch.tensor(inv, dtype=torch.float64)
    t = torch.arange(T, dtype=torch.float64)
    freqs = torch.outer(t, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, d_head)
    return (att * emb.cos()).to(dtype), (att * emb.sin()).to(dtype)


def apply_rope(x, cos, sin):
    """x: (B, T, heads, d_head)."""
    return x * cos[None, :, None, :] + rotate_half(x) * sin[None, :, None, :]


def apply_rope_hf(x, cos, sin, interleaved):
    """HF's apply_rotary_pos_emb on x (B, T, heads, d_head) with cos, sin of
    the rotated dims (T, rot): Llama's rotate_half, or GLM's (cos, sin halves
    repeat_interleave'd, rotate_half on pairs x[..., 0::2], x[..., 1::2]);
    the dims past rot pass through (partial rotary, as GLM's q_pass)."""
    rot = cos.shape[-1]
    xr, xp = x[..., :rot], x[..., rot:]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    if interleaved:
        c = c[..., : rot // 2].repeat_interleave(2, dim=-1)
        s = s[..., : rot // 2].repeat_interleave(2, dim=-1)
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        rh = torch.stack((-x2, x1), dim=-1).flatten(-2)
    else:
        rh = rotate_half(xr)
    return torch.cat((xr * c + rh * s, xp), dim=-1)


def apply_rope_interleaved(x, cos, sin):
    """GPT-J / Meta-checkpoint convention: rotates pairs (2i, 2i+1). Not the
    model's convention; for negative-control tests only."""
    half = x.shape[-1] // 2
    c = cos[None, :, None, :half].repeat_interleave(2, dim=-1)
    s = sin[None, :, None, :half].repeat_interleave(2, dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    rot = torch.stack((-x2, x1), dim=-1).flatten(-2)
    return x * c + rot * s


class VScaleBackwardOnly(torch.autograd.Function):
    """Forward identity; backward multiplies the gradient by the V-scale
    Jacobian J = phi(r) I + 2C/(r+C)^2 v v^T (r = ||v||^2), per row."""

    @staticmethod
    def forward(ctx, v, C):
        ctx.save_for_backward(v, C)
        return v.clone()

    @staticmethod
    def backward(ctx, g):
        v, C = ctx.saved_tensors
        r = (v * v).sum(-1, keepdim=True)
        phi = r / (r + C)
        gv = phi * g + (2.0 * C / (r + C) ** 2) * v * (v * g).sum(-1, keepdim=True)
        return gv, None


def vscale_full(v, C):
    r = (v * v).sum(-1, keepdim=True)
    return (r / (r + C)) * v


class TorchLlama:
    """The model with parameters taken from a dict of numpy arrays (HF names).

    vscale: None or dict(mode="off"|"full"|"backward_only", sigma=0.02,
    per_query_head=False, learnable=True, theta=array (L, n_scale_heads))."""

    def __init__(self, cfg, params, vscale=None, dtype=torch.float64, variant=None):
        self.cfg = {k: cfg[k] for k in CONFIG_KEYS}
        self.cfg.update({k: cfg.get(k, v) for k, v in ARCH_DEFAULTS.items()})
        # Deliberately wrong conventions, used only by negative-control tests
        # that check the comparison can tell them apart: {"rope": "interleaved"}
        # (GPT-J pairs instead of rotate_half), {"gqa": "tile"} (query head h
        # reading kv head h % n_kv_heads instead of h // group).
        self.variant = dict(variant or {})
        self.dtype = dtype
        self.vscale = dict(vscale) if vscale else {"mode": "off"}
        if self.vscale["mode"] not in ("off", "full", "backward_only"):
            raise ValueError("bad V-scale mode %r" % self.vscale["mode"])
        self.p = {}
        for name in param_names(self.cfg):
            self.p[name] = torch.tensor(np.asarray(params[name], dtype=np.float64),
                                        dtype=dtype, requires_grad=True)
        self.theta = None
        if self.vscale["mode"] != "off":
            th = np.asarray(self.vscale["theta"], dtype=np.float64)
            learn = self.vscale["mode"] == "full" and self.vscale.get("learnable", True)
            self.theta = torch.tensor(th, dtype=dtype, requires_grad=learn)

    def n_scale_heads(self):
        c = self.cfg
        return c["n_heads"] if self.vscale.get("per_query_head") else c["n_kv_heads"]

    def _vscale(self, v, layer):
        """v (B, T, KV, dh) -> v_scaled (B, T, n_scale_heads, dh)."""
        c = self.cfg
        mode = self.vscale["mode"]
        if self.vscale.get("per_query_head") and mode != "off":
            rep = c["n_heads"] // c["n_kv_heads"]
            v = v.repeat_interleave(rep, dim=2)  # query head h reads kv head h // rep
        if mode == "off":
            return v * 1.0  # a distinct node so the site has its own gradient
        sigma = self.vscale.get("sigma", 0.02)
        c0 = c["d_model"] * c["d_head"] * sigma * sigma
        C = (c0 * torch.exp(self.theta[layer]))[None, None, :, None]  # (1,1,heads,1)
        if mode == "full":
            return vscale_full(v, C)
        return VScaleBackwardOnly.apply(v, C.expand(v.shape[0], v.shape[1], -1, 1).contiguous())

    def forward(self, tokens, targets=None):
        """Runs the model; returns dict(logits, loss, sites) where sites maps
        (layer, site_name) to a tensor (B, T, width) with retain_grad()."""
        c = self.cfg
        p = self.p
        tok = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
        if tok.dim() == 1:
            tok = tok[None]
        B, T = tok.shape
        H, KV, dh = c["n_heads"], c["n_kv_heads"], c["d_head"]
        rep = H // KV
        eps = c["rms_eps"]
        cos, sin = rope_cos_sin(T, c["rope_dims"] or dh, c["rope_theta"], self.dtype, c)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        sites, extra = {}, {}

        def site(l, name, x):
            x.retain_grad()
            sites[(l, name)] = x
            return x

        h = p["model.embed_tokens.weight"][tok]  # (B, T, d)
        for l in range(c["n_layers"]):
            pre = "model.layers.%d." % l
            h = site(l, "resid_in", h)
            hn = site(l, "attn_norm_out", rms_norm(h, p[pre + "input_layernorm.weight"], eps))
            q = hn @ p[pre + "self_attn.q_proj.weight"].T
            k = hn @ p[pre + "self_attn.k_proj.weight"].T
            v = hn @ p[pre + "self_attn.v_proj.weight"].T
            if c["qkv_bias"]:  # Qwen2: biases on q, k and v (before RoPE)
                q = q + p[pre + "self_attn.q_proj.bias"]
                k = k + p[pre + "self_attn.k_proj.bias"]
                v = v + p[pre + "self_attn.v_proj.bias"]
            # projection outputs (with bias) the gradient of which reaches W_Q / W_K
            # (not sites; kept for the Q/K/V split)
            for nm, x in (("q_proj", q), ("k_proj", k)):
                x.retain_grad()
                extra[(l, nm)] = x
            q, k = q.view(B, T, H, dh), k.view(B, T, KV, dh)
            if c["qk_norm"]:  # Qwen3: RMSNorm over each head's d_head values, before RoPE
                q = rms_norm(q, p[pre + "self_attn.q_norm.weight"], eps)
                k = rms_norm(k, p[pre + "self_attn.k_norm.weight"], eps)
            v = site(l, "v", v)
            if self.variant.get("rope") == "interleaved":
                rope = apply_rope_interleaved
            else:
                def rope(x, cos, sin):
                    return apply_rope_hf(x, cos, sin, c["rope_interleaved"])
            q = site(l, "q", rope(q, cos, sin).reshape(B, T, H * dh))
            k = site(l, "k", rope(k, cos, sin).reshape(B, T, KV * dh))
            vs = self._vscale(v.view(B, T, KV, dh), l)
            n_v = vs.shape[2]
            vs = site(l, "v_scaled", vs.reshape(B, T, n_v * dh))
            qh = q.view(B, T, H, dh).transpose(1, 2)  # (B, H, T, dh)
            kh = k.view(B, T, KV, dh).transpose(1, 2)
            if self.variant.get("gqa") == "tile":
                kh = kh.repeat(1, rep, 1, 1)
            else:
                kh = kh.repeat_interleave(rep, dim=1)
            vh = vs.view(B, T, n_v, dh).transpose(1, 2)
            if n_v != H:
                vh = vh.repeat_interleave(H // n_v, dim=1)
            scores = (qh @ kh.transpose(-1, -2)) / math.sqrt(dh)
            scores = scores.masked_fill(~causal, float("-inf"))
            a = torch.softmax(scores, dim=-1)
            y = (a @ vh).transpose(1, 2).reshape(B, T, H * dh)
            z = site(l, "z", y)
            o = z @ p[pre + "self_attn.o_proj.weight"].T
            if c["sandwich_norm"]:  # GLM-4-0414: post_self_attn_layernorm before the residual add
                o = rms_norm(o, p[pre + "post_self_attn_layernorm.weight"], eps)
            attn_out = site(l, "attn_out", o)
            h_mid = site(l, "resid_mid", h + attn_out)
            hn2 = site(l, "mlp_norm_out",
                       rms_norm(h_mid, p[pre + "post_attention_layernorm.weight"], eps))
            if c["arch"] in FUSED_GATE_UP:  # GLM: gate, up = gate_up_proj(x).chunk(2, dim=-1)
                gate, up = (hn2 @ p[pre + "mlp.gate_up_proj.weight"].T).chunk(2, dim=-1)
            else:
                gate = hn2 @ p[pre + "mlp.gate_proj.weight"].T
                up = hn2 @ p[pre + "mlp.up_proj.weight"].T
            gate, up = site(l, "mlp_pre", gate), site(l, "mlp_up", up)
            act = site(l, "mlp_post", torch.nn.functional.silu(gate) * up)
            r = act @ p[pre + "mlp.down_proj.weight"].T
            if c["sandwich_norm"]:  # GLM-4-0414: post_mlp_layernorm
                r = rms_norm(r, p[pre + "post_mlp_layernorm.weight"], eps)
            mlp_out = site(l, "mlp_out", r)
            h = site(l, "resid_out", h_mid + mlp_out)
        hf = rms_norm(h, p["model.norm.weight"], eps)
        head = p["model.embed_tokens.weight"] if c["tie_embeddings"] else p["lm_head.weight"]
        logits = hf @ head.T
        loss = None
        if targets is not None:
            tgt = torch.as_tensor(np.asarray(targets), dtype=torch.long).reshape(B, T)
            mask = tgt >= 0
            logp = torch.log_softmax(logits, dim=-1)
            picked = logp.gather(-1, tgt.clamp(min=0)[..., None])[..., 0]
            loss = -(picked * mask).sum() / mask.sum()
        return {"logits": logits, "loss": loss, "sites": sites, "extra": extra}

    def zero_grad(self):
        for t in list(self.p.values()) + ([self.theta] if self.theta is not None else []):
            if t is not None and t.grad is not None:
                t.grad = None

    def run(self, tokens, targets, accumulate=False):
        """forward + backward; returns numpy results:
        dict(logits, loss, grads{name}, acts{(l,site)}, site_grads{(l,site)}, dtheta)."""
        if not accumulate:
            self.zero_grad()
        out = self.forward(tokens, targets)
        out["loss"].backward()
        res = {
            "logits": out["logits"].detach().numpy(),
            "loss": float(out["loss"].detach()),
            "grads": {n: t.grad.detach().numpy().copy() for n, t in self.p.items()},
            "acts": {k: v.detach().numpy() for k, v in out["sites"].items()},
            "site_grads": {k: v.grad.detach().numpy() for k, v in out["sites"].items()},
            "dtheta": None,
            "extra_grads": {k: v.grad.detach().numpy() for k, v in out["extra"].items()},
        }
        if self.theta is not None and self.theta.requires_grad:
            res["dtheta"] = self.theta.grad.detach().numpy().copy()
        return res
