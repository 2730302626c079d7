"""Bad and hostile checkpoint files: each gives a specific status and message,
never a crash and never a model. Files are built byte by byte (ggufw.py)."""

import json
import os
import struct
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gsink  # noqa: E402
import ggufw  # noqa: E402
from ggufw import Tensor  # noqa: E402
from gsink.errors import GsinkError  # noqa: E402

ERR_BAD_CONFIG, ERR_SHAPE, ERR_IO, ERR_FORMAT, ERR_UNSUPPORTED, ERR_MISSING = 6, 13, 14, 15, 16, 20

CFG = dict(vocab_size=11, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_head=16, d_ff=32,
           max_seq_len=16, rms_eps=1e-5, rope_theta=10000.0)


def tensors_for(cfg, skip=(), override=None):
    d, H, KV, dh, ff, V = (cfg[k] for k in ("d_model", "n_heads", "n_kv_heads", "d_head", "d_ff",
                                            "vocab_size"))
    spec = [("token_embd.weight", [d, V]), ("output_norm.weight", [d])]
    for l in range(cfg["n_layers"]):
        b = "blk.%d." % l
        spec += [(b + "attn_norm.weight", [d]), (b + "attn_q.weight", [d, H * dh]),
                 (b + "attn_k.weight", [d, KV * dh]), (b + "attn_v.weight", [d, KV * dh]),
                 (b + "attn_output.weight", [H * dh, d]), (b + "ffn_norm.weight", [d]),
                 (b + "ffn_gate.weight", [d, ff]), (b + "ffn_up.weight", [d, ff]),
                 (b + "ffn_down.weight", [ff, d])]
    out = []
    for name, ne in spec:
        if name in skip:
            continue
        if override and name in override:
            ne = override[name]
        n = int(np.prod(ne))
        out.append(Tensor(name, ne, ggufw.F32, np.full(n, 0.01, "<f4").tobytes()))
    return out


def load_status(path):
    with pytest.raises(GsinkError) as e:
        gsink.Model.load(str(path))
    return e.value.status, str(e.value)


def write(tmp_path, name, data):
    p = tmp_path / name
    p.write_bytes(data)
    return p


def valid_gguf():
    return ggufw.build(ggufw.llama_kvs(CFG), tensors_for(CFG))


def test_valid_base_file_loads(tmp_path):
    m = gsink.Model.load(str(write(tmp_path, "ok.gguf", valid_gguf())))
    assert m.config.vocab_size == 11 and m.config.tie_embeddings == 1


def test_gguf_truncated_everywhere(tmp_path):
    data = valid_gguf()
    # Every cut inside the header and metadata, and some inside the tensor data.
    cuts = list(range(0, 600, 7)) + [len(data) - 1, len(data) - 100, len(data) // 2]
    for cut in cuts:
        st, msg = load_status(write(tmp_path, "t.gguf", data[:cut]))
        assert st == ERR_FORMAT, (cut, msg)
        assert msg


def test_gguf_wrong_magic_and_version(tmp_path):
    data = valid_gguf()
    st, msg = load_status(write(tmp_path, "m.gguf", b"GGUX" + data[4:]))
    assert st == ERR_FORMAT and "magic" in msg
    st, msg = load_status(write(tmp_path, "v.gguf", data[:4] + struct.pack("<I", 99) + data[8:]))
    assert st == ERR_UNSUPPORTED and "version" in msg


def test_gguf_absurd_counts(tmp_path):
    d = ggufw.build(ggufw.llama_kvs(CFG), tensors_for(CFG), n_kv=1 << 60)
    st, msg = load_status(write(tmp_path, "a.gguf", d))
    assert st == ERR_FORMAT and "metadata count" in msg
    d = ggufw.build(ggufw.llama_kvs(CFG), tensors_for(CFG), n_tensors=1 << 62)
    st, msg = load_status(write(tmp_path, "b.gguf", d))
    assert st == ERR_FORMAT and "tensor count" in msg
    # An array claiming 2^61 strings.
    bad = (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + ggufw.gstr("tokenizer.ggml.tokens")
           + struct.pack("<IIQ", ggufw.ARRAY, ggufw.STRING, 1 << 61) + b"\0" * 64)
    st, msg = load_status(write(tmp_path, "c.gguf", bad))
    assert st == ERR_FORMAT and "array" in msg
    # A string whose length runs past the end of the file.
    bad = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 40) + b"abc" * 8
    st, msg = load_status(write(tmp_path, "d.gguf", bad))
    assert st == ERR_FORMAT and "past the end" in msg
    # Unknown metadata value type.
    bad = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + ggufw.gstr("k") + struct.pack("<I", 77) + b"\0" * 16
    st, msg = load_status(write(tmp_path, "e.gguf", bad))
    assert st == ERR_FORMAT and "type" in msg


def test_gguf_offsets_outside_or_overlapping(tmp_path):
    ts = tensors_for(CFG)
    offs, o = [], 0
    for t in ts:
        offs.append(o)
        o += (len(t.data) + 31) // 32 * 32
    bad = list(offs)
    bad[-1] = offs[-1] + (1 << 20)  # beyond the data section
    st, msg = load_status(write(tmp_path, "o.gguf", ggufw.build(ggufw.llama_kvs(CFG), tensors_for(CFG),
                                                                tensor_offsets=bad)))
    assert st == ERR_FORMAT and "outside" in msg
    bad = list(offs)
    bad[3] = offs[2]  # two tensors share bytes
    st, msg = load_status(write(tmp_path, "p.gguf", ggufw.build(ggufw.llama_kvs(CFG), tensors_for(CFG),
                                                                tensor_offsets=bad)))
    assert st == ERR_FORMAT and "overlap" in msg
    bad = list(offs)
    bad[1] = offs[1] + 4  # misaligned
    st, msg = load_status(write(tmp_path, "q.gguf", ggufw.build(ggufw.llama_kvs(CFG), tensors_for(CFG),
                                                                tensor_offsets=bad)))
    assert st == ERR_FORMAT and "aligned" in msg
    bad = list(offs)
    bad[0] = (1 << 64) - 32  # offset + size wraps around
    st, msg = load_status(write(tmp_path, "r.gguf", ggufw.build(ggufw.llama_kvs(CFG), tensors_for(CFG),
                                                                tensor_offsets=bad)))
    assert st == ERR_FORMAT


def test_gguf_byte_size_overflow(tmp_path):
    ts = tensors_for(CFG)
    ts.append(Tensor("huge", [1 << 40, 1 << 40], ggufw.F32, b""))
    st, msg = load_status(write(tmp_path, "h.gguf", ggufw.build(ggufw.llama_kvs(CFG), ts)))
    assert st == ERR_FORMAT and "overflow" in msg
    ts = tensors_for(CFG)
    ts.append(Tensor("big", [1 << 61, 4], ggufw.F32, b""))
    st, msg = load_status(write(tmp_path, "i.gguf", ggufw.build(ggufw.llama_kvs(CFG), ts)))
    assert st == ERR_FORMAT and "overflow" in msg
    ts = tensors_for(CFG)
    ts.append(Tensor("five", [1, 1, 1, 1, 1], ggufw.F32, b"\0" * 4))
    st, msg = load_status(write(tmp_path, "j.gguf", ggufw.build(ggufw.llama_kvs(CFG), ts)))
    assert st == ERR_FORMAT and "dimensions" in msg


def test_gguf_unknown_quant_type_and_arch(tmp_path):
    ts = tensors_for(CFG)
    ts[3].ttype = 99
    st, msg = load_status(write(tmp_path, "u.gguf", ggufw.build(ggufw.llama_kvs(CFG), ts)))
    assert st == ERR_UNSUPPORTED and "type 99" in msg
    ts = tensors_for(CFG)
    ts[3].ttype = 10  # Q2_K: a real ggml type this reader does not dequantise
    st, msg = load_status(write(tmp_path, "u2.gguf", ggufw.build(ggufw.llama_kvs(CFG), ts)))
    assert st == ERR_UNSUPPORTED and "Q2_K" in msg
    kv = ggufw.llama_kvs(CFG)
    kv[0] = ("general.architecture", ggufw.STRING, "gpt2")
    st, msg = load_status(write(tmp_path, "w.gguf", ggufw.build(kv, tensors_for(CFG))))
    assert st == ERR_UNSUPPORTED and "architecture" in msg
    ts = tensors_for(CFG)
    ts[2] = Tensor(ts[2].name, [33, 1], ggufw.Q8_0, b"\0" * 34)  # row not a multiple of the block
    st, msg = load_status(write(tmp_path, "x.gguf", ggufw.build(ggufw.llama_kvs(CFG), ts)))
    assert st == ERR_FORMAT and "block" in msg


def test_gguf_missing_tensor_and_shape_mismatch(tmp_path):
    d = ggufw.build(ggufw.llama_kvs(CFG), tensors_for(CFG, skip=("blk.0.ffn_up.weight",)))
    st, msg = load_status(write(tmp_path, "mt.gguf", d))
    assert st == ERR_MISSING and "blk.0.ffn_up.weight" in msg
    d = ggufw.build(ggufw.llama_kvs(CFG), tensors_for(CFG, override={"blk.0.ffn_gate.weight": [32, 31]}))
    st, msg = load_status(write(tmp_path, "sm.gguf", d))
    assert st == ERR_SHAPE and "ffn_gate" in msg
    kv = [x for x in ggufw.llama_kvs(CFG) if x[0] != "llama.block_count"]
    st, msg = load_status(write(tmp_path, "mk.gguf", ggufw.build(kv, tensors_for(CFG))))
    assert st == ERR_FORMAT and "block_count" in msg
    kv = ggufw.llama_kvs(CFG)
    kv = [x if x[0] != "llama.attention.head_count_kv" else (x[0], ggufw.UINT32, 3) for x in kv]
    st, msg = load_status(write(tmp_path, "bc.gguf", ggufw.build(kv, tensors_for(CFG))))
    assert st == ERR_BAD_CONFIG


def test_io_errors(tmp_path):
    st, msg = load_status(tmp_path / "does-not-exist.gguf")
    assert st == ERR_IO
    st, msg = load_status(write(tmp_path, "empty.gguf", b""))
    assert st == ERR_FORMAT
    st, msg = load_status(write(tmp_path, "junk.bin", b"\x01\x02garbage" * 10))
    assert st == ERR_FORMAT
    st, msg = load_status(tmp_path)  # a directory without config.json
    assert st == ERR_IO and "config.json" in msg


# ---- safetensors -------------------------------------------------------------

HF_CFG = {"model_type": "llama", "vocab_size": 11, "hidden_size": 32, "intermediate_size": 32,
          "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
          "max_position_embeddings": 16, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}


def hf_tensors():
    return {
        "model.embed_tokens.weight": ("F32", [11, 32]), "model.norm.weight": ("F32", [32]),
        "model.layers.0.input_layernorm.weight": ("F32", [32]),
        "model.layers.0.self_attn.q_proj.weight": ("F32", [32, 32]),
        "model.layers.0.self_attn.k_proj.weight": ("F32", [16, 32]),
        "model.layers.0.self_attn.v_proj.weight": ("F32", [16, 32]),
        "model.layers.0.self_attn.o_proj.weight": ("F32", [32, 32]),
        "model.layers.0.post_attention_layernorm.weight": ("F32", [32]),
        "model.layers.0.mlp.gate_proj.weight": ("F32", [32, 32]),
        "model.layers.0.mlp.up_proj.weight": ("F32", [32, 32]),
        "model.layers.0.mlp.down_proj.weight": ("F32", [32, 32]),
    }


def st_bytes(tensors, header_override=None, hlen_override=None, offsets=None, pad_data=0):
    esz = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8}
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for i, (name, (dt, shape)) in enumerate(tensors.items()):
        n = int(np.prod(shape)) * esz.get(dt, 4)
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        if offsets and name in offsets:
            header[name]["data_offsets"] = offsets[name]
        off += n
    if header_override:
        header.update(header_override)
    h = json.dumps(header).encode()
    h += b" " * ((-len(h)) % 8)
    hl = len(h) if hlen_override is None else hlen_override
    return struct.pack("<Q", hl) + h + b"\0" * (off + pad_data)


def hf_dir(tmp_path, data, cfg=None, name="hf"):
    d = tmp_path / name
    d.mkdir(exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg or HF_CFG))
    (d / "model.safetensors").write_bytes(data)
    return d


def test_safetensors_valid_base_loads(tmp_path):
    m = gsink.Model.load(str(hf_dir(tmp_path, st_bytes(hf_tensors()))))
    assert m.config.d_head == 16 and m.config.tie_embeddings


def test_safetensors_hostile(tmp_path):
    base = st_bytes(hf_tensors())
    cases = [
        ("truncated header length", base[:5], ERR_FORMAT, "truncated"),
        ("header beyond file", st_bytes(hf_tensors(), hlen_override=1 << 40), ERR_FORMAT, "past the end"),
        ("truncated data", base[:-16], ERR_FORMAT, "outside"),
        ("bad json", base[:8] + b"{\"a\": [1, 2" + base[19:], ERR_FORMAT, "JSON"),
        ("offsets outside", st_bytes(hf_tensors(), offsets={"model.norm.weight": [0, 1 << 50]}),
         ERR_FORMAT, "outside"),
        ("offsets reversed", st_bytes(hf_tensors(), offsets={"model.norm.weight": [128, 0]}),
         ERR_FORMAT, "outside"),
        ("overlap", st_bytes(hf_tensors(), offsets={"model.norm.weight": [0, 128]}), ERR_FORMAT, "overlap"),
        ("size mismatch", st_bytes(hf_tensors(), offsets={"model.norm.weight": [1408, 1408 + 64]}),
         ERR_FORMAT, "need"),
        ("byte size overflow", st_bytes(hf_tensors(), header_override={
            "x": {"dtype": "F32", "shape": [1 << 62, 1 << 62], "data_offsets": [0, 0]}}), ERR_FORMAT, "overflow"),
        ("unknown dtype", st_bytes(hf_tensors(), header_override={
            "x": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 0]}}), ERR_UNSUPPORTED, "dtype"),
        ("missing fields", st_bytes(hf_tensors(), header_override={"x": {"dtype": "F32"}}),
         ERR_FORMAT, "data_offsets"),
        ("negative shape", st_bytes(hf_tensors(), header_override={
            "x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}}), ERR_FORMAT, "shape"),
    ]
    for what, data, want, word in cases:
        d = hf_dir(tmp_path, data, name="c")
        st, msg = load_status(d)
        assert st == want, (what, msg)
        assert word in msg, (what, msg)


def test_safetensors_model_level_errors(tmp_path):
    t = hf_tensors()
    del t["model.layers.0.mlp.up_proj.weight"]
    st, msg = load_status(hf_dir(tmp_path, st_bytes(t), name="a"))
    assert st == ERR_MISSING and "up_proj" in msg
    t = hf_tensors()
    t["model.layers.0.mlp.up_proj.weight"] = ("F32", [31, 32])
    st, msg = load_status(hf_dir(tmp_path, st_bytes(t), name="b"))
    assert st == ERR_SHAPE and "up_proj" in msg
    t = hf_tensors()
    t["model.layers.0.mlp.up_proj.weight"] = ("I64", [32, 32])
    st, msg = load_status(hf_dir(tmp_path, st_bytes(t), name="c"))
    assert st == ERR_UNSUPPORTED and "I64" in msg
    cfg = dict(HF_CFG)
    del cfg["hidden_size"]
    st, msg = load_status(hf_dir(tmp_path, st_bytes(hf_tensors()), cfg=cfg, name="d"))
    assert st == ERR_BAD_CONFIG and "hidden_size" in msg
    cfg = dict(HF_CFG, num_key_value_heads=3)
    st, msg = load_status(hf_dir(tmp_path, st_bytes(hf_tensors()), cfg=cfg, name="e"))
    assert st == ERR_BAD_CONFIG
    cfg = dict(HF_CFG, model_type="gpt2")
    st, msg = load_status(hf_dir(tmp_path, st_bytes(hf_tensors()), cfg=cfg, name="f"))
    assert st == ERR_UNSUPPORTED
    d = hf_dir(tmp_path, st_bytes(hf_tensors()), name="g")
    (d / "config.json").write_text("{\"vocab_size\": 11,,}")
    st, msg = load_status(d)
    assert st == ERR_FORMAT and "config.json" in msg
    # Sharded index naming a tensor that no shard holds.
    d = tmp_path / "h"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(HF_CFG))
    (d / "part1.safetensors").write_bytes(st_bytes(hf_tensors()))
    wm = {k: "part1.safetensors" for k in hf_tensors()}
    wm["model.extra"] = "part1.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    st, msg = load_status(d)
    assert st == ERR_MISSING and "model.extra" in msg
    wm = {k: "../escape.safetensors" for k in hf_tensors()}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    st, msg = load_status(d)
    assert st == ERR_FORMAT and "shard" in msg


def test_failed_load_leaves_no_model_and_library_usable(tmp_path):
    st, _ = load_status(write(tmp_path, "bad.gguf", b"GGUF"))
    assert st == ERR_FORMAT
    assert "GGUF" in gsink.last_error()
    m = gsink.Model.load(str(write(tmp_path, "ok.gguf", valid_gguf())))
    assert m.config.n_layers == 1


# ---- duplicate JSON keys -----------------------------------------------------
# An object naming a key twice means its last value for Python's json and
# HuggingFace (which reads config.json and the shard index with json.load);
# libgsink must read the same files the same way.

def dup_key_json(pairs):
    """A JSON object text with the (key, value) pairs in order, repeats kept."""
    return "{" + ", ".join("%s: %s" % (json.dumps(k), json.dumps(v)) for k, v in pairs) + "}"


def test_config_duplicate_keys_take_the_last_value(tmp_path):
    pairs = list(HF_CFG.items())
    # Earlier, different values for keys given again later (the first ones
    # would give a shape mismatch or a different eps / theta).
    pairs = ([("hidden_size", 64), ("num_key_value_heads", 2), ("rms_norm_eps", 0.25),
              ("rope_theta", 77.0)] + pairs + [("rope_theta", 5000.0)])
    text = dup_key_json(pairs)
    want = json.loads(text)  # the independent reading of the same file
    assert want["hidden_size"] == 32 and want["rope_theta"] == 5000.0
    d = hf_dir(tmp_path, st_bytes(hf_tensors()))
    (d / "config.json").write_text(text)
    m = gsink.Model.load(str(d))
    assert m.config.d_model == want["hidden_size"]
    assert m.config.n_kv_heads == want["num_key_value_heads"]
    assert m.config.rms_eps == pytest.approx(want["rms_norm_eps"])
    assert m.config.rope_theta == pytest.approx(want["rope_theta"])


def test_shard_index_duplicate_keys_take_the_last_value(tmp_path):
    d = tmp_path / "idx"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(HF_CFG))
    (d / "part1.safetensors").write_bytes(st_bytes(hf_tensors()))
    # A tensor first mapped to a shard that does not exist, then to the real one.
    pairs = [("model.norm.weight", "missing.safetensors")] + [(k, "part1.safetensors") for k in hf_tensors()]
    text = '{"weight_map": %s}' % dup_key_json(pairs)
    assert set(json.loads(text)["weight_map"].values()) == {"part1.safetensors"}
    (d / "model.safetensors.index.json").write_text(text)
    m = gsink.Model.load(str(d))
    assert m.config.d_model == 32


# ---- hardening: FIFOs, scale, allocation order, NUL keys, checksums ------------

import subprocess  # noqa: E402
import time  # noqa: E402

CLI = os.environ.get("GSINK_CLI")


def run_py(code, timeout=60):
    """Runs code in a fresh interpreter (same binding, same library); a hang
    fails the test through the timeout instead of stalling the suite."""
    pre = "import sys, gsink\nfrom gsink.errors import GsinkError\nsys.path.insert(0, %r)\n" % HERE
    r = subprocess.run([sys.executable, "-c", pre + code], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


LOAD_STATUS = """
def st(p):
    try:
        gsink.Model.load(p)
        return "loaded"
    except GsinkError as e:
        return "%d %s" % (e.status, e)
"""


def test_fifos_are_refused_without_blocking(tmp_path):
    """A FIFO anywhere the loader reads (model file, config.json, shard named by
    the index, tokenizer GGUF, optimizer state) is refused at once, not waited on."""
    os.mkfifo(tmp_path / "p.gguf")
    a = hf_dir(tmp_path, st_bytes(hf_tensors()), name="cfg")
    (a / "config.json").unlink()
    os.mkfifo(a / "config.json")
    b = hf_dir(tmp_path, st_bytes(hf_tensors()), name="single")
    (b / "model.safetensors").unlink()
    os.mkfifo(b / "model.safetensors")
    c = tmp_path / "sharded"
    c.mkdir()
    (c / "config.json").write_text(json.dumps(HF_CFG))
    os.mkfifo(c / "part1.safetensors")
    (c / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: "part1.safetensors" for k in hf_tensors()}}))
    os.mkfifo(tmp_path / "opt.bin")
    code = LOAD_STATUS + """
for p in %r:
    print(st(p))
try:
    gsink.Tokenizer.load_gguf(%r)
    print("loaded")
except GsinkError as e:
    print("%%d %%s" %% (e.status, e))
m = gsink.Model(gsink.Config.preset("micro"), n_threads=1)
o = gsink.Optimizer(m)
try:
    o.load(%r)
    print("loaded")
except GsinkError as e:
    print("%%d %%s" %% (e.status, e))
o.close()
m.close()
""" % ([str(tmp_path / "p.gguf"), str(a), str(b), str(c)], str(tmp_path / "p.gguf"), str(tmp_path / "opt.bin"))
    out = run_py(code, timeout=60).strip().splitlines()
    assert len(out) == 6, out
    for line in out:
        assert line.startswith("%d " % ERR_IO) and "not a regular file" in line, line
    if CLI:
        for args in (["--model", str(tmp_path / "p.gguf")],
                     ["--preset", "tiny", "--tokens", str(tmp_path / "p.gguf")]):
            r = subprocess.run([CLI, "analyze", *args], capture_output=True, text=True, timeout=60)
            assert r.returncode != 0 and "not a regular file" in r.stderr, r.stderr


def big_gguf(n_extra, dup=False, dup_kv=False):
    """The valid base model plus n_extra zero-size tensor infos (and a repeated
    name or metadata key at the very end), written without quadratic joins."""
    tensors = tensors_for(CFG)
    kvs = ggufw.llama_kvs(CFG)
    if dup_kv:
        kvs = kvs + [kvs[0]]
    parts = [b"GGUF", struct.pack("<IQQ", 3, len(tensors) + n_extra + dup, len(kvs))]
    parts += [ggufw.kv_bytes(*kv) for kv in kvs]
    off, offs = 0, []
    for t in tensors:
        offs.append(off)
        off += (len(t.data) + 31) // 32 * 32
    for t, o in zip(tensors, offs):
        parts.append(ggufw.gstr(t.name) + struct.pack("<I", len(t.ne)) +
                     b"".join(struct.pack("<Q", d) for d in t.ne) + struct.pack("<IQ", t.ttype, o))
    tail = struct.pack("<IQIQ", 1, 0, ggufw.F32, 0)
    parts += [ggufw.gstr("extra.%07d" % i) + tail for i in range(n_extra)]
    if dup:
        parts.append(ggufw.gstr("extra.%07d" % (n_extra - 1)) + tail)
    head = b"".join(parts)
    head += b"\0" * ((-len(head)) % 32)
    return head + b"".join(t.data + b"\0" * ((-len(t.data)) % 32) for t in tensors)


def timed_load(path):
    t0 = time.perf_counter()
    try:
        gsink.Model.load(str(path))
        res = None
    except GsinkError as e:
        res = (e.status, str(e))
    return res, time.perf_counter() - t0


def test_many_tensor_infos_are_not_quadratic(tmp_path):
    # 300k infos: the pairwise name check took ~4 min here (150k: 52 s).
    n = 300_000
    res, dt = timed_load(write(tmp_path, "many.gguf", big_gguf(n)))
    assert res is None and dt < 10, (res, dt)
    res, dt = timed_load(write(tmp_path, "dup.gguf", big_gguf(n, dup=True)))
    assert res[0] == ERR_FORMAT and "duplicate tensor 'extra.0299999'" in res[1] and dt < 10, (res, dt)
    res, _ = timed_load(write(tmp_path, "dupkv.gguf", big_gguf(0, dup_kv=True)))
    assert res[0] == ERR_FORMAT and "duplicate metadata key 'general.architecture'" in res[1], res


def test_many_safetensors_entries_are_not_quadratic(tmp_path):
    n = 250_000
    extra = {"extra.%07d" % i: {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(n)}
    res, dt = timed_load(hf_dir(tmp_path, st_bytes(hf_tensors(), header_override=extra), name="a"))
    assert res is None and dt < 10, (res, dt)
    # A sharded index listing 250k tensors of one shard (each shard opened once).
    d = tmp_path / "b"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(HF_CFG))
    (d / "part1.safetensors").write_bytes(st_bytes(hf_tensors()))
    wm = {k: "part1.safetensors" for k in hf_tensors()}
    wm.update({"missing.%07d" % i: "part1.safetensors" for i in range(n)})
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))
    res, dt = timed_load(d)
    assert res[0] == ERR_MISSING and "missing.0000000" in res[1] and dt < 10, (res, dt)


PEAK_RSS = """
import resource
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(st(%r))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_config_is_checked_against_tensors_before_allocating(tmp_path):
    """A small file whose config claims a vocabulary of 2^22 is refused before
    the 2 x 512 MB of parameters and gradients are allocated and zeroed."""
    cfg = dict(HF_CFG, vocab_size=1 << 22)
    a = hf_dir(tmp_path, st_bytes(hf_tensors()), cfg=cfg, name="a")
    gcfg = dict(CFG, vocab_size=1 << 22)
    g = write(tmp_path, "v.gguf", ggufw.build(ggufw.llama_kvs(gcfg), tensors_for(CFG)))
    for path, word in ((a, "model.embed_tokens.weight"), (g, "token_embd.weight")):
        out = run_py(LOAD_STATUS + PEAK_RSS % str(path)).split("\n")
        assert out[0].startswith("%d " % ERR_SHAPE) and word in out[0], out
        assert int(out[1]) < 200 * 1024, out  # KiB: nothing model-sized was touched


def test_nul_in_json_keys_and_strings(tmp_path):
    # "model.norm.weight\0evil" must not stand in for model.norm.weight.
    t = hf_tensors()
    t["model.norm.weight\0evil"] = t.pop("model.norm.weight")
    st, msg = load_status(hf_dir(tmp_path, st_bytes(t), name="a"))
    assert st == ERR_FORMAT and "NUL" in msg and "safetensors" in msg, msg
    t = hf_tensors()
    t["model.norm.weight"] = ("F32\0x", [32])
    st, msg = load_status(hf_dir(tmp_path, st_bytes(t), name="b"))
    assert st == ERR_UNSUPPORTED and "dtype" in msg, msg
    for key, value, want in (("model_type", "llama\0gpt2", ERR_UNSUPPORTED),
                             ("hidden_act", "silu\0gelu", ERR_UNSUPPORTED)):
        st, msg = load_status(hf_dir(tmp_path, st_bytes(hf_tensors()), cfg=dict(HF_CFG, **{key: value}),
                                     name="c"))
        assert st == want and key in msg, (key, msg)
    d = hf_dir(tmp_path, st_bytes(hf_tensors()), name="d")
    (d / "config.json").write_text(json.dumps(dict(HF_CFG, **{"vocab_size\0x": 12})))
    st, msg = load_status(d)
    assert st == ERR_FORMAT and "NUL" in msg and "config.json" in msg, msg


def test_saved_weights_carry_a_checksum(tmp_path):
    from safetensors import safe_open
    m = gsink.Model(gsink.Config.preset("micro"), seed=3, n_threads=1)
    d = tmp_path / "ckpt"
    m.save(str(d))
    f = d / "model.safetensors"
    with safe_open(str(f), framework="numpy") as s:  # HF's reader: str -> str metadata
        md = s.metadata()
    assert md["format"] == "pt" and md["gsink.checksum"].startswith("fnv1a64:"), md
    assert gsink.Model.load(str(d)).get_param("model.norm.weight").tobytes() == \
        m.get_param("model.norm.weight").tobytes()
    raw = bytearray(f.read_bytes())
    hlen = struct.unpack_from("<Q", raw)[0]
    for pos in (8 + hlen, len(raw) - 1, 8 + hlen + (len(raw) - 8 - hlen) // 2):
        bad = bytearray(raw)
        bad[pos] ^= 0x01
        f.write_bytes(bytes(bad))
        st, msg = load_status(d)
        assert st == ERR_FORMAT and "checksum mismatch" in msg and "model.safetensors" in msg, msg
    # A malformed checksum value is refused too; a file without one loads.
    f.write_bytes(bytes(raw).replace(b'"fnv1a64:', b'"crc9999:'))
    st, msg = load_status(d)
    assert st == ERR_FORMAT and "gsink.checksum" in msg, msg
    f.write_bytes(bytes(raw))
    assert gsink.Model.load(str(d)).config == m.config


@pytest.mark.skipif(not CLI, reason="GSINK_CLI not set")
def test_cli_text_token_file_must_hold_integers(tmp_path):
    """'1 2 3 abc 5' is text with a word in it, not three int32 ids."""
    def cli(data):
        p = tmp_path / "ids"
        p.write_bytes(data)
        return subprocess.run([CLI, "analyze", "--preset", "tiny", "--tokens", str(p), "--batch", "1", "--seq", "4",
                               "--threads", "1"], capture_output=True, text=True, timeout=120)
    for bad, word in ((b"1 2 3 abc 5\n", "'abc' at byte 6"), (b"1 2 3 4x 5\n", "'4x' at byte 6"),
                      (b"1 2 3 - 5\n", "'-' at byte 6")):
        r = cli(bad)
        assert r.returncode != 0 and "is not a token id" in r.stderr and word in r.stderr, (bad, r.stderr)
    r = cli(b"1 2 3 4 5\n")
    assert r.returncode == 0, r.stderr
    r = cli(np.array([1, 2, 3, 4, 5], "<i4").tobytes())  # binary ids still read
    assert r.returncode == 0, r.stderr


def test_model_and_optimizer_freed_in_order_by_the_garbage_collector():
    """A model and its optimizer in a reference cycle are finalised by the cyclic
    collector in an arbitrary order, with their weak references already cleared:
    the C optimizer (whose state lives in the model's backend) must still be freed
    before the model, not after it (a use-after-free that ASan reports; at
    interpreter exit it ended Python with SIGSEGV)."""
    code = """
import gc
for i in range(4):
    m = gsink.Model(gsink.Config.preset("micro"), n_threads=1)
    o = gsink.Optimizer(m)
    m.extra = o                # model <-> optimizer cycle
    if i % 2:
        o.extra = m
    del m, o
    gc.collect()
m = gsink.Model(gsink.Config.preset("micro"), n_threads=1)
o = gsink.Optimizer(m)
m.extra = o                    # left to the interpreter's exit
print("ok")
"""
    assert run_py(code).strip() == "ok"
