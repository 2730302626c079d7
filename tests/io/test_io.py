"""Checkpoint I/O against independent references: the PyPI gguf package's
dequantisers, PyTorch/safetensors writers, the PyTorch reference model
(tests/reference/torch_llama.py) and the `tokenizers` package."""

import json
import os
import struct
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "reference"))

import gsink  # noqa: E402
import ggufw  # noqa: E402
from ggufw import Tensor  # noqa: E402
from gsink.errors import GsinkError  # noqa: E402

torch = pytest.importorskip("torch")
import torch_llama  # noqa: E402

CFG = dict(vocab_size=37, d_model=256, n_layers=1, n_heads=4, n_kv_heads=2, d_head=64, d_ff=256,
           max_seq_len=64, rms_eps=1e-5, rope_theta=10000.0, tie_embeddings=0)


def status_of(fn):
    with pytest.raises(GsinkError) as e:
        fn()
    return e.value.status, str(e.value)


def shapes(cfg):
    d, H, KV, dh, ff, V = (cfg[k] for k in ("d_model", "n_heads", "n_kv_heads", "d_head", "d_ff",
                                            "vocab_size"))
    out = {"model.embed_tokens.weight": (V, d), "model.norm.weight": (d,)}
    if not cfg["tie_embeddings"]:
        out["lm_head.weight"] = (V, d)
    for l in range(cfg["n_layers"]):
        p = "model.layers.%d." % l
        out.update({p + "input_layernorm.weight": (d,), p + "self_attn.q_proj.weight": (H * dh, d),
                    p + "self_attn.k_proj.weight": (KV * dh, d),
                    p + "self_attn.v_proj.weight": (KV * dh, d),
                    p + "self_attn.o_proj.weight": (d, H * dh),
                    p + "post_attention_layernorm.weight": (d,),
                    p + "mlp.gate_proj.weight": (ff, d), p + "mlp.up_proj.weight": (ff, d),
                    p + "mlp.down_proj.weight": (d, ff)})
    return out


def random_params(cfg, seed=0, std=0.05):
    rng = np.random.default_rng(seed)
    p = {}
    for n, s in shapes(cfg).items():
        if len(s) == 1:
            p[n] = (1.0 + 0.1 * rng.standard_normal(s)).astype(np.float32)
        else:
            p[n] = (std * rng.standard_normal(s)).astype(np.float32)
    return p


# ---- GGUF dequantisation ---------------------------------------------------

QTYPES = {"F32": ggufw.F32, "F16": ggufw.F16, "BF16": ggufw.BF16, "Q8_0": ggufw.Q8_0,
          "Q4_0": ggufw.Q4_0, "Q4_1": ggufw.Q4_1, "Q5_0": ggufw.Q5_0, "Q5_1": ggufw.Q5_1,
          "Q4_K": ggufw.Q4_K, "Q5_K": ggufw.Q5_K, "Q6_K": ggufw.Q6_K}


def write_quant_gguf(path, cfg, qtype, seed=1):
    """Every matrix in qtype (random blocks), norms F32. Returns {gguf name: (bytes, ne)}."""
    rng = np.random.default_rng(seed)
    tensors, raw = [], {}
    for hf, s in shapes(cfg).items():
        gname = ggufw.gguf_name(hf)
        if len(s) == 1:
            data = (1 + 0.1 * rng.standard_normal(s)).astype("<f4").tobytes()
            t = Tensor(gname, [s[0]], ggufw.F32, data)
        else:
            data = ggufw.random_blocks(qtype, s[0] * s[1], rng)
            t = Tensor(gname, [s[1], s[0]], qtype, data)
        tensors.append(t)
        raw[hf] = (data, s, t.ttype)
    with open(path, "wb") as f:
        f.write(ggufw.build(ggufw.llama_kvs(cfg), tensors))
    return raw


@pytest.mark.parametrize("name", list(QTYPES))
def test_dequantise_every_type_against_gguf_package(tmp_path, name):
    from gguf import GGMLQuantizationType, quants
    qtype = QTYPES[name]
    cfg = dict(CFG)  # vocab 37: an odd row count for the embedding and the LM head
    path = str(tmp_path / ("m_%s.gguf" % name))
    raw = write_quant_gguf(path, cfg, qtype)
    m = gsink.Model.load(path, n_threads=1)
    for hf, (data, s, tt) in raw.items():
        if len(s) == 1:
            ref = np.frombuffer(data, dtype="<f4")
        else:
            be, bb = ggufw.BLOCK[tt]
            arr = np.frombuffer(data, dtype=np.uint8).reshape(s[0], s[1] // be * bb)
            ref = quants.dequantize(arr, GGMLQuantizationType(tt)).astype(np.float32)
        got = m.get_param(hf)
        # The library undoes llama.cpp's Q/K row permutation: permuting its
        # result again must give the file's row order back.
        if hf.endswith("q_proj.weight"):
            got = ggufw.llama_permute(got, cfg["n_heads"])
        elif hf.endswith("k_proj.weight"):
            got = ggufw.llama_permute(got, cfg["n_kv_heads"])
        np.testing.assert_allclose(got.reshape(ref.shape), ref, rtol=2e-6, atol=1e-7,
                                   err_msg="%s %s" % (name, hf))


def test_gguf_q_k_permutation_gives_hf_logits(tmp_path):
    """F32 GGUF written the way llama.cpp's converter writes it (Q/K rows
    permuted) gives the logits of the HF-layout PyTorch reference."""
    cfg = dict(CFG, vocab_size=41, d_model=64, n_heads=4, n_kv_heads=2, d_head=16, d_ff=96,
               n_layers=2, tie_embeddings=1, rope_theta=500.0)
    p = random_params(cfg, seed=3, std=0.2)
    tensors = []
    for hf, w in p.items():
        if hf.endswith("q_proj.weight"):
            w = ggufw.llama_permute(w, cfg["n_heads"])
        elif hf.endswith("k_proj.weight"):
            w = ggufw.llama_permute(w, cfg["n_kv_heads"])
        tensors.append(Tensor(ggufw.gguf_name(hf), list(w.shape[::-1]), ggufw.F32,
                              np.ascontiguousarray(w, "<f4").tobytes()))
    path = str(tmp_path / "perm.gguf")
    with open(path, "wb") as f:
        f.write(ggufw.build(ggufw.llama_kvs(cfg), tensors))
    m = gsink.Model.load(path, n_threads=1)
    assert m.config.tie_embeddings
    assert abs(m.config.rope_theta - 500.0) < 1e-3
    tokens = np.random.default_rng(0).integers(0, cfg["vocab_size"], size=(2, 12)).astype(np.int32)
    m.forward(tokens)
    ref = torch_llama.TorchLlama(cfg, p).forward(tokens)["logits"].detach().numpy()
    np.testing.assert_allclose(m.logits(), ref, rtol=1e-4, atol=1e-4)


# ---- safetensors -------------------------------------------------------------

def write_hf_dir(d, cfg, params, dtype="float32", shards=1, extra_cfg=None):
    from safetensors.torch import save_file
    os.makedirs(d, exist_ok=True)
    conf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": cfg["vocab_size"], "hidden_size": cfg["d_model"],
            "intermediate_size": cfg["d_ff"], "num_hidden_layers": cfg["n_layers"],
            "num_attention_heads": cfg["n_heads"], "num_key_value_heads": cfg["n_kv_heads"],
            "max_position_embeddings": cfg["max_seq_len"], "rms_norm_eps": cfg["rms_eps"],
            "rope_theta": cfg["rope_theta"], "tie_word_embeddings": bool(cfg["tie_embeddings"]),
            "hidden_act": "silu", "torch_dtype": dtype}
    conf.update(extra_cfg or {})
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(conf, f)
    tdt = getattr(torch, dtype)
    ts = {k: torch.tensor(v).to(tdt).contiguous() for k, v in params.items()}
    if shards == 1:
        save_file(ts, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    else:
        names = sorted(ts)
        wm = {}
        for i in range(shards):
            part = names[i::shards]
            fn = "model-%05d-of-%05d.safetensors" % (i + 1, shards)
            save_file({k: ts[k] for k in part}, os.path.join(d, fn), metadata={"format": "pt"})
            wm.update({k: fn for k in part})
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": wm}, f)
    return {k: t.float().numpy() for k, t in ts.items()}


SMALL = dict(vocab_size=53, d_model=48, n_layers=2, n_heads=6, n_kv_heads=2, d_head=8, d_ff=80,
             max_seq_len=64, rms_eps=1e-5, rope_theta=10000.0, tie_embeddings=0)


@pytest.mark.parametrize("dtype,shards,tie", [("float32", 1, 0), ("float16", 1, 0),
                                              ("bfloat16", 2, 0), ("float32", 3, 1)])
def test_safetensors_from_torch_matches_reference(tmp_path, dtype, shards, tie):
    cfg = dict(SMALL, tie_embeddings=tie)
    p = random_params(cfg, seed=5, std=0.1)
    d = str(tmp_path / "hf")
    loaded = write_hf_dir(d, cfg, p, dtype=dtype, shards=shards)
    m = gsink.Model.load(d, n_threads=1)
    assert m.config.tie_embeddings == tie
    assert m.config.d_head == 8 and m.config.n_kv_heads == 2
    for k, v in loaded.items():
        assert np.array_equal(m.get_param(k), v), k  # conversion to f32 is exact
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, cfg["vocab_size"], size=(2, 16)).astype(np.int32)
    targets = rng.integers(0, cfg["vocab_size"], size=(2, 16)).astype(np.int32)
    loss = m.forward(tokens, targets)
    m.backward()
    ref = torch_llama.TorchLlama(cfg, loaded).run(tokens, targets)
    np.testing.assert_allclose(m.logits(), ref["logits"], rtol=1e-4, atol=1e-5)
    assert abs(loss - ref["loss"]) < 1e-5
    for name in ("model.embed_tokens.weight", "model.layers.1.self_attn.q_proj.weight",
                 "model.layers.0.mlp.down_proj.weight"):
        np.testing.assert_allclose(m.get_param_grad(name), ref["grads"][name], rtol=1e-3, atol=1e-6)
    # The file path (with config.json beside it) loads the same model.
    if shards == 1:
        m2 = gsink.Model.load(os.path.join(d, "model.safetensors"), n_threads=1)
        assert np.array_equal(m2.get_param("model.norm.weight"), loaded["model.norm.weight"])


def test_save_load_bit_for_bit_with_vscale(tmp_path):
    from safetensors.numpy import load_file
    cfg = gsink.Config.preset("micro")
    m = gsink.Model(cfg, seed=7, n_threads=1)
    m.vscale_enable(mode=gsink.VScaleMode.FULL, sigma=0.03, per_query_head=True)
    th = np.random.default_rng(2).standard_normal(m.theta.shape).astype(np.float32)
    m.theta = th
    d = str(tmp_path / "ckpt")
    m.save(d)
    assert sorted(os.listdir(d)) == ["config.json", "model.safetensors"]  # no temp files left
    m2 = gsink.Model.load(d, n_threads=1)
    assert m2.config == m.config
    for name in m.param_names():
        a, b = m.get_param(name), m2.get_param(name)
        assert a.tobytes() == b.tobytes(), name
    assert m2.vscale["mode"] == gsink.VScaleMode.FULL and m2.vscale["per_query_head"]
    assert abs(m2.vscale["sigma"] - 0.03) < 1e-9
    assert m2.theta.tobytes() == th.tobytes()
    # An independent reader sees the HF names and the same bytes.
    st = load_file(os.path.join(d, "model.safetensors"))
    assert st["model.embed_tokens.weight"].tobytes() == m.get_param("model.embed_tokens.weight").tobytes()
    assert st["model.layers.0.self_attn.v_scale_theta"].tobytes() == th[0].tobytes()
    with open(os.path.join(d, "config.json")) as f:
        conf = json.load(f)
    for k, v in {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                 "torch_dtype": "float32", "hidden_act": "silu", "attention_bias": False,
                 "mlp_bias": False, "hidden_size": cfg.d_model,
                 "num_key_value_heads": cfg.n_kv_heads, "head_dim": cfg.d_head}.items():
        assert conf[k] == v, k
    # Saving twice over the same directory is fine (atomic replace).
    m2.save(d)


def test_save_untied_and_plain(tmp_path):
    cfg = gsink.Config.preset("micro").copy(tie_embeddings=0)
    m = gsink.Model(cfg, seed=1, n_threads=1)
    d = str(tmp_path / "u")
    m.save(d)
    m2 = gsink.Model.load(d)
    assert m2.config.tie_embeddings == 0
    assert m2.get_param("lm_head.weight").tobytes() == m.get_param("lm_head.weight").tobytes()
    assert m2.vscale["mode"] == gsink.VScaleMode.OFF


# ---- tokenizer ---------------------------------------------------------------

VARIED_TEXT = (
    "Hello world! It's a test: we've got 12345 numbers, 3.14159 and 1,000,000.\n"
    "  Indented line\twith tabs\t\tand   multiple    spaces.\n\n\n"
    "Ünïcödé: café, naïve, façade, Straße, Ærøskøbing; Ελληνικά κείμενα; Русский текст; "
    "中文字符和标点。日本語のテキスト、カタカナ。한국어 문장입니다. עברית ועוד. العربية نص. "
    "हिन्दी पाठ. ไทย ข้อความ. Emoji 😀🎉👍🏽 and 🇫🇷 flags. Math: ∑x² ≤ ∞, α+β=γ, ½ ¾ ⅞ Ⅻ ²³.\n"
    "Code: def f(x):\n    return x**2 + 1  # comment\n"
    "I'm, you're, they'll, he'd, she's, we've, IT'S, don't. Quotes “like this” and ‘this’.\n"
    "URLs like https://example.com/a?b=c&d=e#frag — dashes – and ellipses… ¡Hola! ¿Qué?\n"
    "Mixed123abc 4ever x2y3 ٣٤٥ ６７８ trailing spaces   \n \n"
    "Control-ish: \u00a0nbsp\u2003emspace\u3000ideographic  end"
)


def train_hf_tokenizer(pre):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    bl = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), bl])
                         if pre == "smollm" else bl)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  show_progress=False)
    tok.train_from_iterator([VARIED_TEXT * 3, VARIED_TEXT.upper(), VARIED_TEXT.lower()], trainer)
    return tok


def vocab_and_merges(hf_tok):
    model = json.loads(hf_tok.to_str())["model"]
    vocab = model["vocab"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    return tokens, merges


def write_tokenizer_gguf(path, tokens, merges, special, pre):
    types = [3 if t in special else 1 for t in tokens]
    kvs = [("general.architecture", ggufw.STRING, "llama"),
           ("tokenizer.ggml.model", ggufw.STRING, "gpt2"),
           ("tokenizer.ggml.pre", ggufw.STRING, pre),
           ("tokenizer.ggml.tokens", ggufw.ARRAY, tokens, ggufw.STRING),
           ("tokenizer.ggml.token_type", ggufw.ARRAY, types, ggufw.INT32),
           ("tokenizer.ggml.merges", ggufw.ARRAY, merges, ggufw.STRING),
           ("tokenizer.ggml.bos_token_id", ggufw.UINT32, tokens.index("<|im_start|>")),
           ("tokenizer.ggml.eos_token_id", ggufw.UINT32, tokens.index("<|im_end|>"))]
    with open(path, "wb") as f:
        f.write(ggufw.build(kvs, []))


def check_texts():
    # The varied text, its pieces, and a few edge cases; a few thousand characters in all.
    lines = VARIED_TEXT.split("\n")
    extra = ["", " ", "  ", "\n", " \n ", "a  b", "x\n\ny", "'s's 's", " 1 22 333", "end "]
    return [VARIED_TEXT, VARIED_TEXT[::-1], VARIED_TEXT.swapcase()] + lines + extra


@pytest.mark.parametrize("pre", ["gpt2", "smollm"])
def test_tokenizer_matches_hf_tokenizers(tmp_path, pre):
    hf = train_hf_tokenizer(pre)
    tokens, merges = vocab_and_merges(hf)
    special = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
    path = str(tmp_path / "tok.gguf")
    write_tokenizer_gguf(path, tokens, merges, special, pre)
    tok = gsink.Tokenizer(path)
    assert tok.vocab_size == len(tokens)
    assert tok.special == (tokens.index("<|im_start|>"), tokens.index("<|im_end|>"))
    total = 0
    for text in check_texts():
        want = hf.encode(text).ids
        got = list(tok.encode(text))
        assert got == want, repr(text[:60])
        assert tok.decode(np.array(got, dtype=np.int32)) == text
        total += len(text)
    assert total > 2000
    # Special tokens: parsed only when asked for.
    text = "<|im_start|>user\nHi 42<|im_end|>"
    assert list(tok.encode(text, parse_special=True)) == hf.encode(text).ids
    plain = list(tok.encode(text))
    assert tokens.index("<|im_start|>") not in plain
    assert tok.decode(plain) == text
    assert tok.encode("hi", add_bos=True)[0] == tokens.index("<|im_start|>")


def test_tokenizer_long_words(tmp_path):
    # One pre-tokenized piece of 10^5 letters: the merge order (lowest rank,
    # leftmost among equals) must match on runs with many equal-rank pairs,
    # and the encoder must not be quadratic in the piece length.
    hf = train_hf_tokenizer("gpt2")
    tokens, merges = vocab_and_merges(hf)
    path = str(tmp_path / "tok.gguf")
    write_tokenizer_gguf(path, tokens, merges, set(), "gpt2")
    tok = gsink.Tokenizer(path)
    letters = "".join(ch for ch in VARIED_TEXT if ch.isalpha() and ch.isascii())
    for text in ["a" * 5001, "ab" * 3000, "aab" * 2000, (letters * 200)[:100000]]:
        want = hf.encode(text).ids
        got = list(tok.encode(text))
        assert got == want, (text[:20], len(text))
        assert tok.decode(np.array(got, dtype=np.int32)) == text


def test_tokenizer_errors(tmp_path):
    hf = train_hf_tokenizer("gpt2")
    tokens, merges = vocab_and_merges(hf)
    path = str(tmp_path / "tok.gguf")
    write_tokenizer_gguf(path, tokens, merges, set(), "gpt2")
    tok = gsink.Tokenizer(path)
    st, msg = status_of(lambda: tok.decode([len(tokens)]))
    assert st == 4 and "outside" in msg  # GSINK_ERR_TOKEN_OUT_OF_RANGE
    assert tok.decode([0]) is not None  # handle still usable
    # Unsupported pre-tokenizer and tokenizer model.
    write_tokenizer_gguf(path, tokens, merges, set(), "qwen2-unknown")
    st, msg = status_of(lambda: gsink.Tokenizer(path))
    assert st == 16 and "pre-tokenizer" in msg


def write_vocab_gguf(path, tokens, types, merges, extra=()):
    """A tokenizer GGUF with explicit token types (1 normal, 2 unknown,
    3 control, 4 user-defined, 6 byte) and extra (key, type, value) entries."""
    kvs = [("general.architecture", ggufw.STRING, "llama"),
           ("tokenizer.ggml.model", ggufw.STRING, "gpt2"),
           ("tokenizer.ggml.pre", ggufw.STRING, "gpt2"),
           ("tokenizer.ggml.tokens", ggufw.ARRAY, tokens, ggufw.STRING),
           ("tokenizer.ggml.token_type", ggufw.ARRAY, types, ggufw.INT32),
           ("tokenizer.ggml.merges", ggufw.ARRAY, merges, ggufw.STRING)] + list(extra)
    with open(path, "wb") as f:
        f.write(ggufw.build(kvs, []))


def hf_with_added(user, control):
    """The trained HF tokenizer plus added tokens (not normalized, so one
    leftmost-longest matcher as in libgsink); returns it and the GGUF
    vocabulary (tokens, types, merges) with the same ids."""
    from tokenizers import AddedToken
    hf = train_hf_tokenizer("gpt2")
    tokens, merges = vocab_and_merges(hf)
    special = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"}
    types = [3 if t in special else 1 for t in tokens]
    known = set(tokens)
    user = [x for x in dict.fromkeys(user) if x not in known]
    control = [x for x in dict.fromkeys(control) if x not in known and x not in user]
    hf.add_tokens([AddedToken(x, normalized=False) for x in user])
    hf.add_special_tokens([AddedToken(x, normalized=False) for x in control])
    tokens = tokens + user + control
    types = types + [4] * len(user) + [3] * len(control)
    assert [hf.token_to_id(x) for x in tokens] == list(range(len(tokens)))
    return hf, tokens, types, merges


def test_tokenizer_overlapping_added_tokens_match_hf(tmp_path):
    # Overlapping added tokens: HF matches the leftmost, and the longest
    # there; pieces of the text as tokens make overlaps everywhere.
    rng = np.random.default_rng(5)
    text = VARIED_TEXT
    pieces = []
    for _ in range(400):
        a = int(rng.integers(0, len(text) - 12))
        pieces.append(text[a:a + int(rng.integers(2, 12))])
    user = ["ab", "abc", "bcd", "b c", "cdef", "hello", "hell", "llo w", " world", "日本", "本語のテ", "😀🎉",
            "ing", "in", "ng "] + pieces[:300]
    control = ["<ctl>", "<ctl", "ctl>x", "es, "] + pieces[300:]
    hf, tokens, types, merges = hf_with_added(user, control)
    path = str(tmp_path / "added.gguf")
    write_vocab_gguf(path, tokens, types, merges)
    tok = gsink.Tokenizer(path)
    texts = check_texts() + ["abcdef xbcdefabcd", "hello world<ctl>x<ctlctl>xx", "<ctl<ctl>>es, ing"]
    n_added = 0
    for t in texts:
        want = hf.encode(t).ids
        got = list(tok.encode(t, parse_special=True))
        assert got == want, repr(t[:60])
        n_added += sum(i >= 600 for i in got)
        assert tok.decode(np.array(got, dtype=np.int32)) == t
    assert n_added > 100
    # Without parse_special the control tokens are text; user-defined ones
    # still match (HF: encode_special_tokens).
    hf.encode_special_tokens = True
    for t in texts:
        assert list(tok.encode(t)) == hf.encode(t).ids, repr(t[:60])


def test_tokenizer_many_added_tokens_linear(tmp_path):
    # 200,000 user-defined tokens: loading (building the matcher) and
    # encoding 100 KB must cost about what they cost with 100 tokens, not
    # time proportional to tokens x text.
    import time
    hf = train_hf_tokenizer("gpt2")
    tokens, merges = vocab_and_merges(hf)
    rng = np.random.default_rng(7)
    raw = (rng.integers(0, 10, (230000, 11)) + ord("a")).astype(np.uint8).tobytes()
    lens = rng.integers(4, 12, 230000)
    known = set(tokens)
    added = list(dict.fromkeys(raw[11 * k:11 * k + int(lens[k])].decode() for k in range(230000)))
    added = [a for a in added if a not in known][:200000]
    assert len(added) == 200000
    text = (rng.integers(0, 11, 100000) + ord("a")).astype(np.uint8).tobytes().decode().replace("k", " ")

    def timed(n_added):
        path = str(tmp_path / ("m%d.gguf" % n_added))
        write_vocab_gguf(path, tokens + added[:n_added], [1] * len(tokens) + [4] * n_added, merges)
        t0 = time.perf_counter()
        tok = gsink.Tokenizer(path)
        t1 = time.perf_counter()
        ids = tok.encode(text)
        t2 = time.perf_counter()
        return tok, ids, t1 - t0, t2 - t1

    _, _, load_small, enc_small = timed(100)
    tok, ids, load_big, enc_big = timed(len(added))
    # Generous bounds (sanitizer builds, shared CI cores): the matcher that
    # tried every added token at every position took 30 s and more here.
    assert enc_big < 10 * enc_small + 2.0, (enc_big, enc_small)
    assert load_big < 10 * load_small + 3.0, (load_big, load_small)
    assert tok.decode(ids) == text
    # The added tokens found are the leftmost-longest ones (a plain scan
    # over the first 20 KB as reference; ids >= len(tokens) are added).
    index = {a: len(tokens) + k for k, a in enumerate(added)}
    want, i, head = [], 0, text[:20000]
    while i < len(head):
        hit = next((head[i:i + n] for n in range(11, 3, -1) if head[i:i + n] in index), None)
        if hit and i + len(hit) <= len(head):
            want.append(index[hit])
            i += len(hit)
        else:
            i += 1
    got = [k for k in tok.encode(head) if k >= len(tokens)]
    assert len(want) > 1000 and got == want


# Input the vocabulary has no token for: HF's BPE uses the byte fallback
# tokens (<0xXX>, of the UTF-8 bytes of each byte-level image it cannot
# find), else the unknown token (one per image, not fused); libgsink must do
# the same, and fail rather than drop input when the vocabulary has neither.

SMALL_VOCAB = ["h", "e", "l", "o", "w", "r", "d", "Ġ", "he", "ll", "hell", "hello", "Ġw", "or"]
SMALL_MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r"]
FALLBACK_TEXTS = ["hello world", "ÿ", "héllo wörld ÿ€😀", "hello\x00\x7f\xa0", VARIED_TEXT, "x"]


def hf_small(vocab, byte_fallback=False, unk=None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    hf = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab)},
                              merges=[tuple(m.split(" ")) for m in SMALL_MERGES],
                              byte_fallback=byte_fallback, unk_token=unk))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.ByteLevel()])
    return hf


def test_tokenizer_unknown_token_like_hf(tmp_path):
    vocab = ["<unk>"] + SMALL_VOCAB
    hf = hf_small(vocab, unk="<unk>")
    for name, extra in [("id", [("tokenizer.ggml.unknown_token_id", ggufw.UINT32, 0)]), ("type", [])]:
        path = str(tmp_path / ("unk_%s.gguf" % name))
        write_vocab_gguf(path, vocab, [2] + [1] * len(SMALL_VOCAB), SMALL_MERGES, extra)
        tok = gsink.Tokenizer(path)
        n_unk = 0
        for text in FALLBACK_TEXTS:
            want = hf.encode(text).ids
            n_unk += want.count(0)
            assert list(tok.encode(text)) == want, (name, text[:40])
        assert n_unk > 100


def test_tokenizer_byte_fallback_like_hf(tmp_path):
    byte_toks = ["<0x%02X>" % b for b in range(256)]
    vocab = SMALL_VOCAB + byte_toks
    hf = hf_small(vocab, byte_fallback=True)
    path = str(tmp_path / "bf.gguf")
    write_vocab_gguf(path, vocab, [1] * len(SMALL_VOCAB) + [6] * 256, SMALL_MERGES)
    tok = gsink.Tokenizer(path)
    for text in FALLBACK_TEXTS:
        want = hf.encode(text).ids
        got = tok.encode(text)
        assert list(got) == want, text[:40]
        assert tok.decode(got) == hf.decode(want) == text
    # A byte fallback token missing: that image takes the unknown token (HF
    # falls back on bytes only when it has all of an image's bytes). Texts
    # where no byte-fallback image follows an unknown one in the same word:
    # HF then emits the pending unknown token after those bytes, out of
    # input order, where libgsink keeps the order.
    vocab = ["<unk>"] + SMALL_VOCAB + [b for b in byte_toks if b != "<0xBF>"]
    hf = hf_small(vocab, byte_fallback=True, unk="<unk>")
    write_vocab_gguf(path, vocab, [2] + [1] * len(SMALL_VOCAB) + [6] * 255, SMALL_MERGES)
    tok = gsink.Tokenizer(path)
    for text in ["ÿ", "hello ÿ world", "he¿", "¿ x ÿ", "タ"]:  # images ¿ (C2 BF) -> <unk>
        want = hf.encode(text).ids
        assert 0 in want
        assert list(tok.encode(text)) == want, text
    # ÿ is C3 BF: images Ã (C3 83, by bytes) and ¿ (C2 BF: <unk>), in order.
    y = [vocab.index("<0xC3>"), vocab.index("<0x83>"), 0]
    assert tok.encode("ÿÿ").tolist() == y + y


def test_tokenizer_unencodable_input_is_an_error(tmp_path):
    # Neither byte fallback nor unknown token: HF drops such input silently;
    # libgsink refuses it, naming the first byte it cannot encode.
    path = str(tmp_path / "two.gguf")
    write_vocab_gguf(path, ["h", "e"], [1, 1], [])
    tok = gsink.Tokenizer(path)
    with pytest.raises(gsink.InvalidArgumentError) as e:
        tok.encode("hello world")
    assert e.value.status == 2 and "byte 2 " in str(e.value)  # "l" is the first byte with no token
    assert tok.encode("hehe").tolist() == [0, 1, 0, 1]  # the handle stays usable
    text = "hé"  # é is C3 A9: neither image (Ã, ©) is in the vocabulary
    with pytest.raises(gsink.InvalidArgumentError) as e:
        tok.encode(text)
    assert "byte %d " % len("h".encode()) in str(e.value)
    # Some byte fallback tokens but not those an image needs, and no unknown token.
    path = str(tmp_path / "partial.gguf")
    write_vocab_gguf(path, SMALL_VOCAB + ["<0x78>"], [1] * len(SMALL_VOCAB) + [6], SMALL_MERGES)
    tok = gsink.Tokenizer(path)
    assert tok.encode("hex").tolist() == [SMALL_VOCAB.index("he"), len(SMALL_VOCAB)]
    with pytest.raises(gsink.InvalidArgumentError) as e:
        tok.encode("hello wörld")
    assert "byte %d " % "hello wörld".encode().index(b"\xc3") in str(e.value)
