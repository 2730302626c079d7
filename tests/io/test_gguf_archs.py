"""GGUF twins of the HuggingFace architecture fixtures (tests/data/hf-archs),
written with the PyPI `gguf` package the way llama.cpp's convert_hf_to_gguf.py
writes them: llama.cpp tensor names, <arch>.* metadata, the Q/K row
permutation for the llama family only (LlamaModel.permute; qwen2 keeps HF's
order and adds blk.N.attn_{q,k,v}.bias; qwen3 adds blk.N.attn_{q,k}_norm;
glm4 keeps HF's order, writes rope.dimension_count = head_dim x
partial_rotary_factor, the fused gate_up_proj as blk.N.ffn_up and the sandwich
norms as blk.N.post_attention_norm / post_ffw_norm), llama3 RoPE as the rope_freqs.weight
divisors (LlamaModel.generate_extra_tensors), linear / yarn RoPE scaling as
<arch>.rope.scaling.* keys, 1-D tensors kept F32. Mistral converts as llama.
Each twin must give the numbers of its safetensors twin: F32 to 1e-6 (in fact
bitwise here), Q8_0 / Q4_0 against the safetensors model with the
dequantised weights."""

import json
import math
import os
import shutil

import numpy as np
import pytest

import gsink

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
from gguf import GGMLQuantizationType as QT  # noqa: E402
from gguf.quants import dequantize, quantize  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "data", "hf-archs")
GGUF_ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "qwen3": "qwen3",
             "glm4": "glm4"}  # model_type -> llama.cpp arch

LAYER = {"input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
         "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
         "self_attn.o_proj.weight": "attn_output.weight", "self_attn.q_proj.bias": "attn_q.bias",
         "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
         "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
         "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
         "self_attn.q_norm.weight": "attn_q_norm.weight", "self_attn.k_norm.weight": "attn_k_norm.weight",
         "post_self_attn_layernorm.weight": "post_attention_norm.weight",
         "post_mlp_layernorm.weight": "post_ffw_norm.weight", "mlp.gate_up_proj.weight": "ffn_up.weight"}
TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
       "lm_head.weight": "output.weight"}


def gguf_name(hf):
    if hf in TOP:
        return TOP[hf]
    parts = hf.split(".", 3)  # model.layers.N.rest
    return "blk.%s.%s" % (parts[2], LAYER[parts[3]])


def permute(w, n_head, n_head_kv):
    """llama.cpp's LlamaModel.permute (HF rotate_half rows -> interleaved pairs)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_divisors(cfg):
    """LlamaModel.generate_extra_tensors: rope_freqs.weight."""
    rs = cfg["rope_scaling"]
    base, dim = cfg["rope_theta"], cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, lo, hi = rs.get("factor", 8.0), rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old = rs.get("original_max_position_embeddings", 8192)
    low_wavelen, high_wavelen = old / lo, old / hi
    out = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < high_wavelen:
            out.append(1)
        elif wavelen > low_wavelen:
            out.append(factor)
        else:
            smooth = (old / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def quantizable(name, arr, qtype):
    return qtype != QT.F32 and arr.ndim == 2 and arr.shape[1] % 32 == 0


def write_gguf(src, path, qtype=QT.F32):
    """GGUF twin of the safetensors directory src; returns the dequantised
    HF-order weights of the quantised tensors."""
    from safetensors.numpy import load_file
    cfg = json.load(open(os.path.join(src, "config.json")))
    arch = GGUF_ARCH[cfg.get("model_type", "llama")]
    H, KV = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    dh = cfg.get("head_dim") or cfg["hidden_size"] // H
    w = gguf.GGUFWriter(path, arch)
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_key_length(dh)
    w.add_value_length(dh)
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-6))
    w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    w.add_vocab_size(cfg["vocab_size"])
    if arch == "glm4":  # Glm4Model.set_gguf_parameters
        w.add_rope_dimension_count(int(dh * cfg.get("partial_rotary_factor", 0.5)))
    rs = cfg.get("rope_scaling") or {}
    rtype = rs.get("rope_type", rs.get("type"))
    if rtype == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(rs["factor"])
    elif rtype == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(rs["factor"])
        w.add_rope_scaling_orig_ctx_len(rs["original_max_position_embeddings"])
        if "beta_fast" in rs:
            w.add_rope_scaling_yarn_beta_fast(rs["beta_fast"])
            w.add_rope_scaling_yarn_beta_slow(rs["beta_slow"])
    elif rtype == "llama3":
        w.add_tensor("rope_freqs.weight", llama3_divisors(cfg))
    deq = {}
    for name, arr in sorted(load_file(os.path.join(src, "model.safetensors")).items()):
        arr = arr.astype(np.float32)
        g = gguf_name(name)
        if arch == "llama" and g.endswith("attn_q.weight"):
            arr_g = permute(arr, H, H)
        elif arch == "llama" and g.endswith("attn_k.weight"):
            arr_g = permute(arr, H, KV)
        else:
            arr_g = arr
        if quantizable(name, arr, qtype):
            q = quantize(arr_g, qtype)
            w.add_tensor(g, q, raw_shape=q.shape, raw_dtype=qtype)
            deq[name] = dequantize(quantize(arr, qtype), qtype).reshape(arr.shape)
        else:
            w.add_tensor(g, np.ascontiguousarray(arr_g))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return deq


def twin_dir(tmp_path, fixture, **rope):
    """The fixture, optionally with another rope_scaling in its config.json."""
    src = os.path.join(DATA, fixture)
    if not rope:
        return src
    d = tmp_path / ("st-" + fixture)
    d.mkdir()
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["rope_scaling"] = rope
    json.dump(cfg, open(d / "config.json", "w"))
    shutil.copy(os.path.join(src, "model.safetensors"), d / "model.safetensors")
    return str(d)


def run(m, toks):
    loss = m.forward(np.ascontiguousarray(toks[:, :-1]), np.ascontiguousarray(toks[:, 1:]))
    m.backward()
    return loss, m.logits(), m.gradient_norms("attn_norm_out", 0, agg="sum_then_norm")


def rel(a, b):
    b = np.asarray(b, np.float64)
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / max(np.max(np.abs(b)), 1e-30))


CASES = {  # name -> (fixture, rope_scaling override or None)
    "llama": ("llama", None),
    "mistral": ("mistral", None),
    "qwen2": ("qwen2", None),
    "qwen3": ("qwen3", None),
    "glm4": ("glm4", None),
    "llama31": ("llama31", None),  # llama3 RoPE, no medium band at d_head 16
    "llama3-medium": ("llama", dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                    high_freq_factor=4.0, original_max_position_embeddings=256)),
    "llama3-fit": ("llama", dict(rope_type="llama3", factor=4.0, low_freq_factor=2.0,
                                 high_freq_factor=16.0, original_max_position_embeddings=2048)),
    "linear": ("llama", dict(rope_type="linear", factor=2.5)),
    "yarn": ("qwen2", dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=64,
                           beta_fast=32.0, beta_slow=1.0)),
}


@pytest.mark.parametrize("qtype", [QT.F32, QT.Q8_0, QT.Q4_0], ids=lambda q: q.name)
@pytest.mark.parametrize("case", sorted(CASES))
def test_gguf_twin_matches_safetensors(tmp_path, case, qtype):
    fixture, rope = CASES[case]
    st = twin_dir(tmp_path, fixture, **(rope or {}))
    path = str(tmp_path / (case + ".gguf"))
    deq = write_gguf(st, path, qtype)
    toks = np.load(os.path.join(DATA, fixture, "tokens.npy"))
    with gsink.Model.load(st, n_threads=2) as ref, gsink.Model.load(path, n_threads=2) as m:
        c, r = m.config.to_dict(), ref.config.to_dict()
        assert c["arch"] == (r["arch"] if r["arch"] != "mistral" else "llama")
        assert c["qkv_bias"] == r["qkv_bias"] and c["rope_scaling"] == r["rope_scaling"]
        for k in ("d_head", "qk_norm", "rope_dims", "rope_interleaved", "sandwich_norm"):
            assert c[k] == r[k], k
        assert c["tie_embeddings"] == r["tie_embeddings"]
        if r["rope_scaling"] != "llama3":  # llama3: equivalent low/high factors
            for k in ("rope_factor", "rope_original_max_pos", "rope_beta_fast", "rope_beta_slow"):
                assert c[k] == pytest.approx(r[k], rel=1e-6), k
        for name, a in deq.items():
            ref.set_param(name, a)
            assert np.array_equal(m.get_param(name), a), name  # dequantised and un-permuted
        (l0, g0, n0), (l1, g1, n1) = run(ref, toks), run(m, toks)
        errs = {"loss": rel(l1, l0), "logits": rel(g1, g0), "grad_norm": rel(n1, n0)}
        print("%s %s: %s" % (case, qtype.name, errs))
        assert max(errs.values()) <= 1e-6, errs
        if qtype == QT.F32 and case != "llama3-fit":
            for name in ref.param_names():
                assert np.array_equal(m.get_param(name), ref.get_param(name)), name


@pytest.mark.parametrize("arch", ["gemma2", "chatglm", "qwen3moe"])
def test_other_gguf_architectures_refused_by_name(tmp_path, arch):
    path = str(tmp_path / (arch + ".gguf"))
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(gsink.UnsupportedError, match="architecture '%s' is not supported \\(llama, qwen2, qwen3, glm4\\)" % arch):
        gsink.Model.load(path)


def test_gguf_rope_scaling_refusals(tmp_path):
    st = os.path.join(DATA, "llama")
    for rtype in ("longrope", "su"):
        src = str(tmp_path / ("x-" + rtype + ".gguf"))
        write_gguf_with(st, src, lambda w: w.add_string("llama.rope.scaling.type", rtype))
        with pytest.raises(gsink.UnsupportedError, match="RoPE scaling type '%s'" % rtype):
            gsink.Model.load(src)
    src = str(tmp_path / "bad-freqs.gguf")
    write_gguf_with(st, src, lambda w: w.add_tensor("rope_freqs.weight",
                                                    np.array([1, 3, 2, 5, 1, 8, 8, 8], np.float32)))
    with pytest.raises(gsink.UnsupportedError, match="does not follow llama3"):
        gsink.Model.load(src)


def write_gguf_with(src, path, extra):
    """write_gguf plus extra(writer) before the header is written."""
    orig = gguf.GGUFWriter.write_header_to_file

    def patched(self, *a, **kw):
        extra(self)
        gguf.GGUFWriter.write_header_to_file = orig
        return orig(self, *a, **kw)

    gguf.GGUFWriter.write_header_to_file = patched
    try:
        write_gguf(src, path)
    finally:
        gguf.GGUFWriter.write_header_to_file = orig


def test_gguf_sliding_window_loads_as_mistral(tmp_path):
    """A llama-architecture GGUF with attention.sliding_window (Mistral):
    the mistral row with that window, same numbers as the safetensors twin."""
    src = str(tmp_path / "st")
    shutil.copytree(os.path.join(DATA, "mistral"), src)
    cfg = json.load(open(os.path.join(src, "config.json")))
    cfg["sliding_window"] = 5
    json.dump(cfg, open(os.path.join(src, "config.json"), "w"))
    path = str(tmp_path / "swa.gguf")
    write_gguf_with(src, path, lambda w: w.add_sliding_window(5))
    toks = np.load(os.path.join(DATA, "mistral", "tokens.npy"))
    with gsink.Model.load(src) as ref, gsink.Model.load(path) as m:
        assert m.config.arch == "mistral" and m.config.sliding_window == 5
        (l0, g0, _), (l1, g1, _) = run(ref, toks), run(m, toks)
        assert l0 == l1 and np.array_equal(g0, g1)
        assert toks.shape[1] - 1 > 5  # the window cuts


@pytest.mark.parametrize("fixture", ["llama", "qwen2", "qwen3", "glm4"])
def test_tensor_names_follow_gguf_py(fixture):
    """The names written above (and read by the loader) are the ones gguf-py's
    TensorNameMap gives for the arch, as convert_hf_to_gguf.py's
    map_tensor_name does: e.g. glm4's post_self_attn_layernorm ->
    post_attention_norm, post_mlp_layernorm -> post_ffw_norm, the fused
    gate_up_proj -> ffn_up; qwen3's q_norm / k_norm -> attn_q_norm / attn_k_norm."""
    from safetensors.numpy import load_file
    src = os.path.join(DATA, fixture)
    cfg = json.load(open(os.path.join(src, "config.json")))
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == GGUF_ARCH[cfg["model_type"]])
    tmap = gguf.get_tensor_name_map(arch, cfg["num_hidden_layers"])
    for name in load_file(os.path.join(src, "model.safetensors")):
        assert gguf_name(name) == tmap.get_name(name, try_suffixes=(".weight", ".bias")), name


def test_gguf_rope_dimension_count(tmp_path):
    """rope.dimension_count: glm4's partial rotary count is read (same numbers as
    above); other archs must rotate the whole head; odd counts are refused."""
    for fixture, dims, msg in (("qwen3", 16, "rope.dimension_count = 16 is not supported for qwen3"),
                               ("qwen2", 8, "rope.dimension_count = 8 is not supported for qwen2"),
                               ("glm4", 7, "rope.dimension_count = 7 rotated dims")):
        path = str(tmp_path / (fixture + ".gguf"))
        arch = GGUF_ARCH[fixture]
        if fixture == "glm4":  # replace the converter's value
            orig = gguf.GGUFWriter.add_rope_dimension_count
            gguf.GGUFWriter.add_rope_dimension_count = lambda self, n: orig(self, dims)
            try:
                write_gguf(os.path.join(DATA, fixture), path)
            finally:
                gguf.GGUFWriter.add_rope_dimension_count = orig
        else:
            write_gguf_with(os.path.join(DATA, fixture), path,
                            lambda w: w.add_uint32("%s.rope.dimension_count" % arch, dims))
        with pytest.raises(gsink.UnsupportedError, match=msg):
            gsink.Model.load(path)
    with gsink.Model.load(os.path.join(DATA, "glm4")) as ref:
        assert ref.config.rope_dims == 8 and ref.config.rope_interleaved
    path = str(tmp_path / "mrope.gguf")  # GLM-4V's text model: M-RoPE sections
    write_gguf_with(os.path.join(DATA, "glm4"), path, lambda w: w.add_rope_dimension_sections([4, 2, 2, 0]))
    with pytest.raises(gsink.UnsupportedError, match="rope.dimension_sections \\(M-RoPE\\)"):
        gsink.Model.load(path)
