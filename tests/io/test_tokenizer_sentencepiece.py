"""SentencePiece BPE models (the tokenizer of Llama 2, Mistral 7B, TinyLlama)
against Google's sentencepiece library: a BPE model trained here with
Llama 2's settings (identity normalisation, whitespace kept, a dummy prefix,
byte fallback, split digits), written as

  * a GGUF tokenizer the way llama.cpp's converter writes one
    (tokenizer.ggml.model "llama": pieces, scores, token types): libgsink's
    ids and decoded text equal sentencepiece's;
  * tokenizer.json by transformers' own LlamaConverter: libgsink's ids
    equal the converted fast tokenizer's and sentencepiece's."""

import io
import json
import os
import random
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import gsink  # noqa: E402
import ggufw  # noqa: E402
from gsink.errors import GsinkError  # noqa: E402

spm = pytest.importorskip("sentencepiece")
pytest.importorskip("google.protobuf")
pytest.importorskip("tokenizers")

from test_tokenizer_json import check_texts, corpus  # noqa: E402

UNSUPPORTED, FORMAT = 16, 15


def train(byte_fallback=True, vocab_size=1200):
    model = io.BytesIO()
    lines = [line for part in corpus() for line in part.split("\n") if line.strip()]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=byte_fallback, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True,
        character_coverage=0.995, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
        minloglevel=2)
    return model.getvalue()


def gguf_of(proto, path, extra=()):
    """tokens, scores and types as llama.cpp's convert_hf_to_gguf.py
    (_set_vocab_sentencepiece) writes them."""
    sp = spm.SentencePieceProcessor(model_proto=proto)
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 5 if sp.is_unused(i)
                     else 6 if sp.is_byte(i) else 1)
    kvs = [("general.architecture", ggufw.STRING, "llama"),
           ("tokenizer.ggml.model", ggufw.STRING, "llama"),
           ("tokenizer.ggml.tokens", ggufw.ARRAY, tokens, ggufw.STRING),
           ("tokenizer.ggml.scores", ggufw.ARRAY, scores, ggufw.FLOAT32),
           ("tokenizer.ggml.token_type", ggufw.ARRAY, types, ggufw.INT32),
           ("tokenizer.ggml.bos_token_id", ggufw.UINT32, 1),
           ("tokenizer.ggml.eos_token_id", ggufw.UINT32, 2),
           ("tokenizer.ggml.unknown_token_id", ggufw.UINT32, 0)] + list(extra)
    with open(path, "wb") as f:
        f.write(ggufw.build(kvs, []))
    return path


@pytest.fixture(scope="module")
def proto():
    return train()


TEXTS = check_texts() + [part[:20000] for part in corpus()[3:9]] + ["", " ", "  a", "a ", "\u2581x"]


def test_gguf_matches_sentencepiece(proto, tmp_path):
    sp = spm.SentencePieceProcessor(model_proto=proto)
    tok = gsink.Tokenizer(gguf_of(proto, str(tmp_path / "t.gguf")))
    assert tok.vocab_size == sp.get_piece_size() and tok.special == (1, 2)
    n = fallback = 0
    for text in TEXTS:
        want = sp.encode(text)
        got = tok.encode(text).tolist()
        assert got == want, (repr(text[:60]), got[:30], want[:30])
        assert tok.decode(got) == sp.decode(want), repr(text[:60])
        n += len(want)
        fallback += sum(sp.is_byte(i) for i in want)
    assert n > 20000 and 500 < fallback < n // 2  # merges and byte fallback both exercised
    assert tok.encode("ab", add_bos=True).tolist()[0] == 1
    # control tokens decode to their text here (sentencepiece drops them)
    ids = sp.encode("Hello world")
    assert tok.decode([1] + ids) == "<s> " + sp.decode(ids) and sp.decode([1] + ids) == sp.decode(ids)


def test_gguf_without_space_prefix(proto, tmp_path):
    """add_space_prefix false: no dummy prefix (sentencepiece's
    add_dummy_prefix=False, set through the model's normaliser spec)."""
    from transformers.convert_slow_tokenizer import import_protobuf
    m = import_protobuf().ModelProto()  # transformers' copy: one descriptor pool for both tests
    m.ParseFromString(proto)
    m.normalizer_spec.add_dummy_prefix = False
    sp = spm.SentencePieceProcessor(model_proto=m.SerializeToString())
    tok = gsink.Tokenizer(gguf_of(proto, str(tmp_path / "t.gguf"),
                                  [("tokenizer.ggml.add_space_prefix", ggufw.BOOL, False)]))
    for text in TEXTS[:80]:
        assert tok.encode(text).tolist() == sp.encode(text), repr(text[:60])


def test_gguf_unknown_without_byte_fallback(tmp_path):
    proto = train(byte_fallback=False)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    tok = gsink.Tokenizer(gguf_of(proto, str(tmp_path / "t.gguf")))
    unk = 0
    for text in TEXTS:
        want = sp.encode(text)
        assert tok.encode(text).tolist() == want, repr(text[:60])
        unk += want.count(0)
    assert unk > 100


def test_gguf_decode_random_ids(proto, tmp_path):
    """Random ids, many of them byte tokens: runs that are not UTF-8 become
    U+FFFD, as sentencepiece decodes them."""
    sp = spm.SentencePieceProcessor(model_proto=proto)
    tok = gsink.Tokenizer(gguf_of(proto, str(tmp_path / "t.gguf")))
    byte_ids = [i for i in range(sp.get_piece_size()) if sp.is_byte(i)]
    normal = [i for i in range(sp.get_piece_size()) if not (sp.is_byte(i) or sp.is_control(i) or sp.is_unknown(i))]
    rng = random.Random(5)
    for _ in range(300):
        ids = [rng.choice(byte_ids) if rng.random() < 0.5 else rng.choice(normal) for _ in range(rng.randint(1, 30))]
        assert tok.decode(ids) == sp.decode(ids), ids
    # runs longer than the decoder's stack buffer (64 bytes)
    by_value = {int(sp.id_to_piece(i)[3:5], 16): i for i in byte_ids}
    long_run = [by_value[b] for b in ("\u00e9t\u00e9 \u4e2d\u6587 \U0001F600 " * 12).encode("utf-8")]
    for ids in (long_run, long_run[:100] + [by_value[0xC3]] + long_run[100:]):
        assert len(ids) > 64 and tok.decode(ids) == sp.decode(ids)


@pytest.mark.parametrize("form", ["legacy", "metaspace"])
def test_converted_tokenizer_json(proto, tmp_path, form):
    """transformers' LlamaConverter output (what Llama 2 / Mistral 7B
    checkpoints ship: the legacy normaliser) loads and encodes as the
    converted fast tokenizer and as sentencepiece; "metaspace" is the same
    file in the form later transformers releases write (no normaliser, a
    Metaspace pre-tokenizer with prepend_scheme "first")."""
    from tokenizers import Tokenizer
    from transformers import LlamaTokenizer
    from transformers.convert_slow_tokenizer import convert_slow_tokenizer
    (tmp_path / "tokenizer.model").write_bytes(proto)
    slow = LlamaTokenizer(str(tmp_path / "tokenizer.model"), legacy=True)
    doc = json.loads(convert_slow_tokenizer(slow).to_str())
    assert [n["type"] for n in doc["normalizer"]["normalizers"]] == ["Prepend", "Replace"]
    assert doc["pre_tokenizer"] is None and doc["model"]["byte_fallback"]
    if form == "metaspace":
        doc["normalizer"] = None
        doc["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                                "split": False}
    d = tmp_path / "hf"
    d.mkdir()
    (d / "tokenizer.json").write_text(json.dumps(doc), encoding="utf-8")
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    tok = gsink.Tokenizer(str(d))
    sp = spm.SentencePieceProcessor(model_proto=proto)
    for text in TEXTS:
        want = hf.encode(text, add_special_tokens=False).ids
        assert tok.encode(text, parse_special=True).tolist() == want, repr(text[:60])
        if form == "legacy":  # "first" puts no U+2581 before a leading space; sentencepiece does
            assert want == sp.encode(text), repr(text[:60])
        assert tok.decode(want) == hf.decode(want, skip_special_tokens=False), repr(text[:60])
    # the BOS that the checkpoint's post-processor adds: <s>, id 1
    assert tok.encode("hello", add_bos=True).tolist() == [1] + sp.encode("hello")


@pytest.mark.parametrize("change,status,needle", [
    (lambda kv: kv.pop(3), FORMAT, "tokenizer.ggml.scores"),
    (lambda kv: kv.__setitem__(3, ("tokenizer.ggml.scores", ggufw.ARRAY, [0.0], ggufw.FLOAT32)), FORMAT,
     "one entry per token"),
    (lambda kv: kv.__setitem__(3, ("tokenizer.ggml.scores", ggufw.ARRAY, [float("nan")] * 5, ggufw.FLOAT32)),
     FORMAT, "NaN"),
    (lambda kv: kv.append(("tokenizer.ggml.add_space_prefix", ggufw.UINT32, 1)), FORMAT, "not a bool"),
    (lambda kv: kv.append(("tokenizer.ggml.remove_extra_whitespaces", ggufw.BOOL, True)), UNSUPPORTED,
     "remove_extra_whitespaces"),
    (lambda kv: kv.__setitem__(1, ("tokenizer.ggml.model", ggufw.STRING, "bert")), UNSUPPORTED, "'bert'"),
])
def test_gguf_refused(tmp_path, change, status, needle):
    kv = [("general.architecture", ggufw.STRING, "llama"),
          ("tokenizer.ggml.model", ggufw.STRING, "llama"),
          ("tokenizer.ggml.tokens", ggufw.ARRAY, ["<unk>", "a", "b", "\u2581", "ab"], ggufw.STRING),
          ("tokenizer.ggml.scores", ggufw.ARRAY, [0.0, -1.0, -2.0, -3.0, -0.5], ggufw.FLOAT32),
          ("tokenizer.ggml.token_type", ggufw.ARRAY, [2, 1, 1, 1, 1], ggufw.INT32)]
    p = str(tmp_path / "t.gguf")
    with open(p, "wb") as f:
        f.write(ggufw.build(kv, []))
    assert gsink.Tokenizer(p).encode("ab").tolist() == [3, 4]
    change(kv)
    with open(p, "wb") as f:
        f.write(ggufw.build(kv, []))
    with pytest.raises(GsinkError) as e:
        gsink.Tokenizer(p)
    assert e.value.status == status and needle in str(e.value), str(e.value)
