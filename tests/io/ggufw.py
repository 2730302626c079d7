"""A minimal GGUF v3 writer written from the format description, used to build
valid and deliberately broken files byte by byte (tests/io only)."""

import struct

import numpy as np

UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
F32, F16, Q4_0, Q4_1 = 0, 1, 2, 3
Q5_0, Q5_1, Q8_0 = 6, 7, 8
Q4_K, Q5_K, Q6_K = 12, 13, 14
BF16 = 30

# (elements per block, bytes per block)
BLOCK = {F32: (1, 4), F16: (1, 2), BF16: (1, 2), Q4_0: (32, 18), Q4_1: (32, 20), Q5_0: (32, 22),
         Q5_1: (32, 24), Q8_0: (32, 34), Q4_K: (256, 144), Q5_K: (256, 176), Q6_K: (256, 210)}


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def kv_bytes(key, vtype, value, arr_type=None):
    out = gstr(key) + struct.pack("<I", vtype)
    return out + value_bytes(vtype, value, arr_type)


def value_bytes(vtype, value, arr_type=None):
    fmt = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i",
           FLOAT32: "<f", BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
    if vtype in fmt:
        return struct.pack(fmt[vtype], value)
    if vtype == STRING:
        return gstr(value)
    if vtype == ARRAY:
        out = struct.pack("<IQ", arr_type, len(value))
        return out + b"".join(value_bytes(arr_type, v) for v in value)
    raise ValueError(vtype)


class Tensor:
    def __init__(self, name, ne, ttype, data):
        self.name, self.ne, self.ttype, self.data = name, list(ne), ttype, bytes(data)
        self.offset = None


def build(kvs, tensors, alignment=32, tensor_offsets=None, n_kv=None, n_tensors=None, version=3):
    """kvs: list of (key, type, value[, arr_type]); tensors: list of Tensor.
    Returns the file as bytes. tensor_offsets overrides the computed offsets."""
    head = b"GGUF" + struct.pack("<I", version)
    head += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors,
                        len(kvs) if n_kv is None else n_kv)
    for kv in kvs:
        head += kv_bytes(*kv)
    off = 0
    for i, t in enumerate(tensors):
        t.offset = off if tensor_offsets is None else tensor_offsets[i]
        off += len(t.data)
        off = (off + alignment - 1) // alignment * alignment
    for t in tensors:
        head += gstr(t.name) + struct.pack("<I", len(t.ne))
        head += b"".join(struct.pack("<Q", d) for d in t.ne)
        head += struct.pack("<IQ", t.ttype, t.offset)
    head += b"\0" * ((-len(head)) % alignment)
    data = bytearray()
    for t in tensors:
        if tensor_offsets is None:
            data += t.data
            data += b"\0" * ((-len(data)) % alignment)
        else:
            end = t.offset + len(t.data)
            if end > len(data) and t.offset < 1 << 16:
                data += b"\0" * (end - len(data))
            if t.offset < 1 << 16:
                data[t.offset:end] = t.data
    return head + bytes(data)


def llama_permute(w, n_head):
    """llama.cpp convert_hf_to_gguf.py LlamaModel.permute: HF rotate_half row
    order -> interleaved pairs, per head."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


HF_TO_GGUF = {
    "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    return "blk.%s.%s" % (parts[2], HF_TO_GGUF[".".join(parts[3:])])


def llama_kvs(cfg, extra=()):
    kv = [("general.architecture", STRING, "llama"),
          ("llama.embedding_length", UINT32, cfg["d_model"]),
          ("llama.block_count", UINT32, cfg["n_layers"]),
          ("llama.attention.head_count", UINT32, cfg["n_heads"]),
          ("llama.attention.head_count_kv", UINT32, cfg["n_kv_heads"]),
          ("llama.feed_forward_length", UINT32, cfg["d_ff"]),
          ("llama.context_length", UINT32, cfg.get("max_seq_len", 64)),
          ("llama.attention.layer_norm_rms_epsilon", FLOAT32, cfg["rms_eps"]),
          ("llama.rope.freq_base", FLOAT32, cfg["rope_theta"]),
          ("llama.vocab_size", UINT32, cfg["vocab_size"])]
    return kv + list(extra)


def random_blocks(ttype, n_elems, rng):
    """Random quantised data of n_elems elements with finite, moderate scales."""
    be, bb = BLOCK[ttype]
    nb = n_elems // be
    if ttype == F32:
        return rng.standard_normal(n_elems).astype("<f4").tobytes()
    if ttype == F16:
        return rng.standard_normal(n_elems).astype("<f2").tobytes()
    if ttype == BF16:
        f = rng.standard_normal(n_elems).astype("<f4").view("<u4")
        return (f >> 16).astype("<u2").tobytes()
    raw = rng.integers(0, 256, size=(nb, bb), dtype=np.uint8)

    def put_f16(col, lo, hi):
        v = rng.uniform(lo, hi, size=nb).astype("<f2").view(np.uint8).reshape(nb, 2)
        raw[:, col:col + 2] = v
    if ttype in (Q4_0, Q5_0, Q8_0):
        put_f16(0, -0.1, 0.1)
    elif ttype in (Q4_1, Q5_1):
        put_f16(0, 0.0, 0.1)
        put_f16(2, -0.5, 0.5)
    elif ttype in (Q4_K, Q5_K):
        put_f16(0, 0.0, 0.01)
        put_f16(2, 0.0, 0.01)
    elif ttype == Q6_K:
        put_f16(208, -0.01, 0.01)
    return raw.tobytes()
