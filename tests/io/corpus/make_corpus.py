"""Regenerates the small fuzz seed corpus: python3 tests/io/corpus/make_corpus.py"""
import json
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import ggufw  # noqa: E402

rng = np.random.default_rng(0)
cfg = dict(vocab_size=5, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_head=16, d_ff=32,
           rms_eps=1e-5, rope_theta=10000.0)
tensors = [ggufw.Tensor("t_%d" % q, [256 if ggufw.BLOCK[q][0] == 256 else 32, 1], q,
                        ggufw.random_blocks(q, 256 if ggufw.BLOCK[q][0] == 256 else 32, rng))
           for q in sorted(ggufw.BLOCK)]
kvs = ggufw.llama_kvs(cfg) + [
    ("tokenizer.ggml.model", ggufw.STRING, "gpt2"),
    ("tokenizer.ggml.tokens", ggufw.ARRAY, ["a", "b", "ab", "<s>", "\u0120"], ggufw.STRING),
    ("tokenizer.ggml.merges", ggufw.ARRAY, ["a b"], ggufw.STRING),
    ("tokenizer.ggml.token_type", ggufw.ARRAY, [1, 1, 1, 3, 1], ggufw.INT32),
    ("general.alignment", ggufw.UINT32, 64),
    ("misc.nested", ggufw.ARRAY, [1.5, 2.5], ggufw.FLOAT64),
]
open(os.path.join(HERE, "gguf", "all_types.gguf"), "wb").write(ggufw.build(kvs, tensors, alignment=64))
open(os.path.join(HERE, "gguf", "tiny.gguf"), "wb").write(
    ggufw.build(ggufw.llama_kvs(cfg)[:3], tensors[:2]))


def st(tensors):
    header, off, data = {"__metadata__": {"format": "pt"}}, 0, b""
    for name, (dt, shape, raw) in tensors.items():
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        data += raw
    h = json.dumps(header).encode()
    h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + data


f32 = rng.standard_normal(12).astype("<f4").tobytes()
open(os.path.join(HERE, "safetensors", "mixed.safetensors"), "wb").write(st({
    "a": ("F32", [3, 4], f32), "b": ("F16", [2, 2], b"\x00\x3c" * 4), "c": ("BF16", [1], b"\x80\x3f"),
    "d": ("I64", [1], b"\0" * 8), "e\u00e9\\\"": ("F32", [0], b"")}))
open(os.path.join(HERE, "safetensors", "one.safetensors"), "wb").write(st({"w": ("F32", [3], f32[:12])}))

# Tokenizer seeds (fuzz_replay tokenizer): added tokens (control, user-defined,
# overlapping), byte-fallback tokens, an unknown token, a vocabulary with
# neither (the error path), and the model file above.
tok_dir = os.path.join(HERE, "tokenizer")
os.makedirs(tok_dir, exist_ok=True)
words = ["a", "b", "ab", "ba", "aba", "<s>", "<|end|>", "<|end|><s>", "\u0120", "\u010a", "<unk>",
         "<0x41>", "<0xC3>", "<0xFF>", "\u0120a", "z"]
types = [1, 1, 1, 1, 1, 3, 4, 4, 1, 1, 2, 6, 6, 6, 1, 1]
open(os.path.join(tok_dir, "bpe_added_bytes.gguf"), "wb").write(ggufw.build([
    ("general.architecture", ggufw.STRING, "llama"),
    ("tokenizer.ggml.model", ggufw.STRING, "gpt2"),
    ("tokenizer.ggml.pre", ggufw.STRING, "smollm"),
    ("tokenizer.ggml.tokens", ggufw.ARRAY, words, ggufw.STRING),
    ("tokenizer.ggml.merges", ggufw.ARRAY, ["a b", "b a", "ab a", "\u0120 a"], ggufw.STRING),
    ("tokenizer.ggml.token_type", ggufw.ARRAY, types, ggufw.INT32),
    ("tokenizer.ggml.bos_token_id", ggufw.UINT32, 5),
    ("tokenizer.ggml.eos_token_id", ggufw.UINT32, 6),
    ("tokenizer.ggml.unknown_token_id", ggufw.UINT32, 10),
], []))
open(os.path.join(tok_dir, "two_tokens.gguf"), "wb").write(ggufw.build([
    ("tokenizer.ggml.model", ggufw.STRING, "gpt2"),
    ("tokenizer.ggml.tokens", ggufw.ARRAY, ["a", "b", "ab"], ggufw.STRING),
    ("tokenizer.ggml.merges", ggufw.ARRAY, ["a b"], ggufw.STRING),
], []))
open(os.path.join(tok_dir, "all_types.gguf"), "wb").write(
    open(os.path.join(HERE, "gguf", "all_types.gguf"), "rb").read())

# tokenizer.json seeds (fuzz_replay tokenizer_json): each supported
# pre-tokenizer, both merge forms, added tokens (special or not), byte
# fallback and unknown tokens, a gap in the ids, ignore_merges.
import json as _json

tj_dir = os.path.join(HERE, "tokenizer_json")
os.makedirs(tj_dir, exist_ok=True)
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
          r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
BL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}


def tj_doc(pre, merges, extra_model=None, added=None, vocab_extra=None):
    vocab = {"a": 0, "b": 1, "ab": 2, "ba": 3, "aba": 4, "\u0120": 5, "\u0120a": 6, "1": 7, "2": 8, "12": 9,
             "<unk>": 10, "<0x41>": 11, "<0xC3>": 12, "'": 13, "S": 14, "'S": 15, "\u010a": 16}
    vocab.update(vocab_extra or {})
    model = {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
             "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": True, "ignore_merges": False,
             "vocab": vocab, "merges": merges}
    model.update(extra_model or {})
    return _json.dumps({"version": "1.0", "truncation": None, "padding": None,
                        "added_tokens": added if added is not None else [
                            {"id": 20, "content": "<|endoftext|>", "special": True},
                            {"id": 21, "content": "<|end|><s>", "special": False},
                            {"id": 23, "content": "<s>", "special": True}],
                        "normalizer": None, "pre_tokenizer": pre, "post_processor": None,
                        "decoder": {"type": "ByteLevel"}, "model": model}, ensure_ascii=False).encode()


split = lambda r: {"type": "Sequence", "pretokenizers": [  # noqa: E731
    {"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": False}, BL]}
open(os.path.join(tj_dir, "llama3_array_merges.json"), "wb").write(
    tj_doc(split(LLAMA3), [["a", "b"], ["b", "a"], ["ab", "a"], ["\u0120", "a"], ["1", "2"], ["'", "S"]],
           {"ignore_merges": True}))
open(os.path.join(tj_dir, "qwen2_gap.json"), "wb").write(
    tj_doc(split(QWEN2), ["a b", "b a", "ab a", "\u0120 a", "1 2", "' S"]))
open(os.path.join(tj_dir, "smollm_digits.json"), "wb").write(
    tj_doc({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True},
                                                   dict(BL, use_regex=True)]},
           ["a b", "b a", "ab a", "\u0120 a"], {"unk_token": None, "byte_fallback": False}))
open(os.path.join(tj_dir, "gpt2_plain.json"), "wb").write(
    tj_doc(dict(BL, use_regex=True), ["a b", "\u0120 a"], {"unk_token": None},
           added=[{"id": 17, "content": "<|endoftext|>", "special": True}], vocab_extra={"<|endoftext|>": 17}))
open(os.path.join(tj_dir, "qwen2_nfc.json"), "wb").write(
    tj_doc(split(QWEN2), ["a b", "b a", "\u0120 a"], {},
           vocab_extra={"\u00c3": 17, "\u00a9": 18, "\u00cc": 19, "\u0123": 22})
    .replace(b'"normalizer": null', b'"normalizer": {"type": "NFC"}'))

# SentencePiece-style seeds (Llama 2 / Mistral): the legacy normalizer
# (Prepend + Replace) with fuse_unk, and a Metaspace pre-tokenizer that
# splits; byte fallback tokens for ASCII only, so other characters take the
# unknown token.
M = "\u2581"
SPM_DEC = {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": M}, "content": " "},
                                            {"type": "ByteFallback"}, {"type": "Fuse"},
                                            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}


def spm_doc(normalizer, pre, fuse):
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, M: 3, "a": 4, "b": 5, M + "a": 6, "ab": 7, M + "ab": 8, "1": 9}
    for b in range(128):
        vocab["<0x%02X>" % b] = 10 + b
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, c in enumerate(["<unk>", "<s>", "</s>"])]
    return _json.dumps({"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
                        "normalizer": normalizer, "pre_tokenizer": pre, "post_processor": None,
                        "decoder": SPM_DEC,
                        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                                  "fuse_unk": fuse, "byte_fallback": True, "ignore_merges": False,
                                  "vocab": vocab, "merges": [M + " a", "a b", M + " ab"]}},
                       ensure_ascii=False).encode()


open(os.path.join(tj_dir, "spm_legacy.json"), "wb").write(
    spm_doc({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": M},
                                                 {"type": "Replace", "pattern": {"String": " "}, "content": M}]},
            None, True))
open(os.path.join(tj_dir, "spm_metaspace.json"), "wb").write(
    spm_doc(None, {"type": "Metaspace", "replacement": M, "prepend_scheme": "first", "split": True}, False))

# A GGUF SentencePiece tokenizer seed (fuzz_replay tokenizer): merges by
# score (equal scores included), byte tokens for part of the bytes, a
# control and a user-defined token, no space prefix in the second.
spm_words = ["<unk>", "<s>", "</s>", "<0x41>", "<0xC3>", "<0xA9>", M, "a", "b", M + "a", "ab", M + "ab", "ba",
             "<|user|>"]
spm_scores = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -0.5, -0.5, -0.25, -4.0, 0.0]
spm_types = [2, 3, 3, 6, 6, 6, 1, 1, 1, 1, 1, 1, 1, 4]
for name, extra in (("spm_scores.gguf", []),
                    ("spm_no_prefix.gguf", [("tokenizer.ggml.add_space_prefix", ggufw.BOOL, False)])):
    open(os.path.join(tok_dir, name), "wb").write(ggufw.build([
        ("general.architecture", ggufw.STRING, "llama"),
        ("tokenizer.ggml.model", ggufw.STRING, "llama"),
        ("tokenizer.ggml.tokens", ggufw.ARRAY, spm_words, ggufw.STRING),
        ("tokenizer.ggml.scores", ggufw.ARRAY, spm_scores, ggufw.FLOAT32),
        ("tokenizer.ggml.token_type", ggufw.ARRAY, spm_types, ggufw.INT32),
        ("tokenizer.ggml.bos_token_id", ggufw.UINT32, 1),
        ("tokenizer.ggml.unknown_token_id", ggufw.UINT32, 0),
    ] + extra, []))

# Tekken and o200k pre-tokenizers (letter classes with marks, slashes after
# newlines, o200k's contractions).
TEKKEN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
          r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}|"
          r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
O200K = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
         r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+"
         r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|"
         r"\s*[\r\n]+|\s+(?!\S)|\s+")
open(os.path.join(tj_dir, "tekken.json"), "wb").write(
    tj_doc(split(TEKKEN), ["a b", "b a", "ab a", "\u0120 a", "1 2", "' S"]))
open(os.path.join(tj_dir, "o200k.json"), "wb").write(
    tj_doc(split(O200K), ["a b", "b a", "\u0120 a", "' S"], {"ignore_merges": True}))
