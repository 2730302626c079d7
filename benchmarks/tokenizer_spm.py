"""Encoding speed of a SentencePiece BPE tokenizer (Llama 2's settings, the
model trained by tests/io/test_tokenizer_sentencepiece.py) on one long
document: libgsink from the GGUF form and from transformers' tokenizer.json,
against Google's sentencepiece and HF `tokenizers` on the same text, with the
ids compared.

    .venv/bin/python benchmarks/tokenizer_spm.py [--mb 8]

Needs the built library (GSINK_LIBRARY, default build/lib/libgsink.so.0.1.0),
sentencepiece, protobuf, tokenizers and transformers (tools/bootstrap.sh)."""

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "bindings", "python"))
sys.path.insert(0, os.path.join(ROOT, "tests", "io"))
os.environ.setdefault("GSINK_LIBRARY", os.path.join(ROOT, "build", "lib", "libgsink.so.0.1.0"))

import gsink  # noqa: E402
import sentencepiece as spm  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402
from transformers import LlamaTokenizer  # noqa: E402
from transformers.convert_slow_tokenizer import convert_slow_tokenizer  # noqa: E402

import test_tokenizer_sentencepiece as T  # noqa: E402


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=8.0, help="document size in millions of characters")
    a = ap.parse_args()
    proto = T.train()
    text = "\n".join(T.corpus())
    n = int(a.mb * 1e6)
    text = (text * (n // len(text) + 1))[:n]
    with tempfile.TemporaryDirectory() as d:
        gg = gsink.Tokenizer(T.gguf_of(proto, os.path.join(d, "t.gguf")))
        with open(os.path.join(d, "tokenizer.model"), "wb") as f:
            f.write(proto)
        hf_dir = os.path.join(d, "hf")
        os.makedirs(hf_dir)
        convert_slow_tokenizer(LlamaTokenizer(os.path.join(d, "tokenizer.model"), legacy=True)).save(
            os.path.join(hf_dir, "tokenizer.json"))
        gj = gsink.Tokenizer(hf_dir)
        hf = Tokenizer.from_file(os.path.join(hf_dir, "tokenizer.json"))
        sp = spm.SentencePieceProcessor(model_proto=proto)
        ref, t_sp = timed(lambda: sp.encode(text))
        rows = [("sentencepiece 0.2.0 (reference)", ref, t_sp),
                ("HF tokenizers %s, transformers' tokenizer.json" % __import__("tokenizers").__version__,
                 *timed(lambda: hf.encode(text, add_special_tokens=False).ids)),
                ("libgsink, GGUF (tokenizer.ggml.model llama)", *timed(lambda: gg.encode(text).tolist())),
                ("libgsink, the same tokenizer.json", *timed(lambda: gj.encode(text, parse_special=True).tolist()))]
    print("one document of %d characters, %d ids (sentencepiece), 1 thread each" % (len(text), len(ref)))
    for name, ids, t in rows:
        print("  %-52s %8.2f s  %6.2fx sentencepiece's time  ids equal: %s" % (name, t, t / t_sp, ids == ref))


if __name__ == "__main__":
    main()
