#!/usr/bin/env python3
"""Prepare the training corpus for gsink-train.

Sources (both Debian packages, reStructuredText, English, free licences):
  - linux-doc-6.1: the Linux kernel Documentation/ tree (GPL-2.0);
  - python3.11-doc: the Python 3.11 documentation sources (PSF licence).
See docs/training.md for why.

Steps
  1. read every English .rst/.txt document (gzip or plain) of each source package,
     skipping translations/ and machine-readable bindings;
  2. clean: drop code/literal blocks, tables, directives and markup, keep
     prose paragraphs (one paragraph per line);
  3. shuffle documents with --seed and hold out --val-fraction of them;
  4. train a byte-level BPE tokenizer (HuggingFace `tokenizers`) on the
     training split, with <|endoftext|> as the only special token;
  5. write train.bin / val.bin: every document's tokens followed by
     <|endoftext|> (no BOS), packed as uint16 (vocab <= 65536) or int32,
     behind a 40-byte header that gsink-train verifies.

Token file header (little-endian, 40 bytes):
  char[8] magic "GSKTOK\\0\\1" | u32 version (1) | u32 dtype bytes (2 or 4)
  u64 token count | u32 vocab size | i32 end-of-text id
  u32 CRC-32 (zlib) of the payload | u32 reserved (0)

Usage:
  apt-get install linux-doc-6.1 python3.11-doc
  python tools/corpus/prepare.py --out .cache/corpus/docs
  # or without installing: apt-get download linux-doc-6.1 python3.11-doc
  python tools/corpus/prepare.py --out .cache/corpus/docs --deb linux-doc-6.1_*.deb --deb python3.11-doc_*.deb
"""
import argparse
import gzip
import json
import math
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import numpy as np

MAGIC = b"GSKTOK\x00\x01"
VERSION = 1
HEADER = struct.Struct("<8sIIQIiII")
assert HEADER.size == 40
EOT = "<|endoftext|>"
# package -> directory of rst sources inside it
SOURCES = {
    "linux-doc-6.1": "usr/share/doc/linux-doc-6.1/Documentation",
    "python3.11-doc": "usr/share/doc/python3.11/html/_sources",
}

SKIP_DIRS = ("translations", "devicetree/bindings", "sphinx", "sphinx-static", "images")


def write_tokens(path, tokens, vocab_size, eot_id):
    """Writes a token file atomically (temporary file, fsync, rename)."""
    dtype = np.uint16 if vocab_size <= 65536 else np.int32
    arr = np.ascontiguousarray(np.asarray(tokens, dtype=dtype))
    payload = arr.tobytes()
    hdr = HEADER.pack(MAGIC, VERSION, arr.dtype.itemsize, arr.size, vocab_size, eot_id,
                      zlib.crc32(payload) & 0xFFFFFFFF, 0)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(hdr)
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_tokens(path):
    """Reads and verifies a token file; raises ValueError if it is corrupt."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < HEADER.size:
        raise ValueError(f"{path}: shorter than the header")
    magic, version, dbytes, count, vocab, eot, crc, _ = HEADER.unpack_from(raw)
    if magic != MAGIC or version != VERSION or dbytes not in (2, 4):
        raise ValueError(f"{path}: not a version-1 gsink token file")
    payload = raw[HEADER.size:]
    if len(payload) != count * dbytes or (zlib.crc32(payload) & 0xFFFFFFFF) != crc:
        raise ValueError(f"{path}: size or checksum mismatch")
    arr = np.frombuffer(payload, dtype=np.uint16 if dbytes == 2 else np.int32)
    return arr, vocab, eot


# ---- cleaning ---------------------------------------------------------------

INLINE_RULES = [
    (re.compile(r":[a-zA-Z:+-]+:`([^`<]*?)\s*<[^`>]*>`"), r"\1"),  # :ref:`text <label>`
    (re.compile(r":[a-zA-Z:+-]+:`([^`]*)`"), r"\1"),              # :c:func:`foo`
    (re.compile(r"`([^`<]+?)\s*<[^`>]+>`__?"), r"\1"),              # `text <url>`_
    (re.compile(r"``([^`]+)``"), r"\1"),                           # ``literal``
    (re.compile(r"`([^`]+)`_{0,2}"), r"\1"),                        # `interpreted`
    (re.compile(r"\*\*([^*]+)\*\*"), r"\1"),                       # **strong**
    (re.compile(r"(?<![\w*])\*([^*\s][^*]*)\*(?!\w)"), r"\1"),     # *emphasis*
    (re.compile(r"\|([A-Za-z][\w -]*)\|"), r"\1"),                 # |substitution|
    (re.compile(r"\[#?\w*\]_"), ""),                                # footnote refs
    (re.compile(r"\s+"), " "),
]
CODE_HINT = re.compile(r"[{};]\s*$|^\s*#\s*(include|define|if)|->|==|\(\)\s*;|^\s*(\$|#) |0x[0-9a-fA-F]{4,}")
ADORNMENT = re.compile(r"^\s*([=\-~^\"'`#*+_.:])\1{2,}\s*$")
TABLE = re.compile(r"^\s*[+|].*[+|]\s*$|^\s*(=+\s+)+=+\s*$")


def clean_inline(text):
    for pat, rep in INLINE_RULES:
        text = pat.sub(rep, text)
    return text.strip()


def is_prose(par):
    if len(par) < 40:
        return False
    words = par.split()
    if len(words) < 6:
        return False
    letters = sum(c.isalpha() or c == " " for c in par)
    if letters / len(par) < 0.80:
        return False
    if not par.isascii():
        non_ascii = sum(not c.isascii() for c in par)
        if non_ascii / len(par) > 0.02:
            return False
    # mostly lower-case words with ordinary punctuation: English sentences
    wordlike = sum(w.strip(".,;:()!?'\"").isalpha() for w in words)
    return wordlike / len(words) >= 0.75


def clean_rst(text):
    """Keeps the prose paragraphs of an rst/txt document, one per line."""
    lines = text.replace("\t", "        ").split("\n")
    out, par = [], []
    skip_indent = None  # indentation of a literal/directive block being skipped
    prev_literal = False

    def flush():
        if par:
            joined = clean_inline(" ".join(par))
            if is_prose(joined):
                out.append(joined)
            par.clear()

    for line in lines:
        stripped = line.strip()
        indent = len(line) - len(line.lstrip(" "))
        if skip_indent is not None:
            if stripped == "" or indent > skip_indent:
                continue
            skip_indent = None
        if stripped == "":
            flush()
            continue
        if stripped.startswith(".. ") or stripped == "..":
            flush()
            skip_indent = indent  # directive + its indented body (code, tables, toctree)
            continue
        if ADORNMENT.match(line) or TABLE.match(line):
            flush()
            par.clear()  # a heading's title line: do not keep it as prose
            continue
        if stripped.startswith(":") and re.match(r"^:[\w -]+:", stripped):
            flush()
            continue
        if CODE_HINT.search(stripped):
            flush()
            par.clear()
            continue
        if par and indent > 0 and prev_literal:
            continue
        par.append(stripped.lstrip("-*+# ").strip() if re.match(r"^[-*+]\s", stripped) else stripped)
        if stripped.endswith("::"):
            # rst literal block follows: drop the marker, skip the indented block
            par[-1] = par[-1][:-2].rstrip() + ("" if par[-1].endswith(" ::") else ":")
            flush()
            skip_indent = indent
    flush()
    return "\n".join(out)


def iter_documents(root, pkg):
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        dirnames[:] = sorted(d for d in dirnames
                             if not any(os.path.join(rel, d).lstrip("./").startswith(s) for s in SKIP_DIRS))
        for name in sorted(filenames):
            base = name[:-3] if name.endswith(".gz") else name
            if not (base.endswith(".rst") or base.endswith(".txt")) or base.endswith(".py.txt"):
                continue
            path = os.path.join(dirpath, name)
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rb") as f:
                raw = f.read()
            yield pkg + ":" + os.path.relpath(path, root), raw.decode("utf-8", errors="replace")


def unigram_entropy_nats(tokens, vocab):
    counts = np.bincount(tokens, minlength=vocab).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/", help="where the packages are installed (default /)")
    ap.add_argument("--deb", action="append", default=[],
                    help="a .deb of one of the source packages to extract instead of installing it")
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--val-fraction", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--max-docs", type=int, default=0, help="use only the first N documents (tests)")
    args = ap.parse_args()

    roots = {}
    tmpdir = tempfile.TemporaryDirectory()
    for deb in args.deb:
        dest = os.path.join(tmpdir.name, os.path.basename(deb))
        subprocess.run(["dpkg-deb", "-x", deb, dest], check=True)
        for pkg, rel in SOURCES.items():
            if os.path.isdir(os.path.join(dest, rel)):
                roots[pkg] = os.path.join(dest, rel)
    for pkg, rel in SOURCES.items():
        if pkg not in roots and os.path.isdir(os.path.join(args.root, rel)):
            roots[pkg] = os.path.join(args.root, rel)
    missing = [p for p in SOURCES if p not in roots]
    if missing:
        sys.exit(f"prepare.py: corpus packages not found: {' '.join(missing)}; install them with "
                 f"`apt-get install {' '.join(missing)}` or pass their .deb files with --deb")

    t0 = time.time()
    docs, raw_chars = [], 0
    for rel, text in (d for pkg in sorted(roots) for d in iter_documents(roots[pkg], pkg)):
        raw_chars += len(text)
        cleaned = clean_rst(text)
        if len(cleaned) >= 200:
            docs.append((rel, cleaned))
        if args.max_docs and len(docs) >= args.max_docs:
            break
    rng = random.Random(args.seed)
    rng.shuffle(docs)
    n_val = max(1, int(round(len(docs) * args.val_fraction)))
    val_docs, train_docs = docs[:n_val], docs[n_val:]
    clean_chars = sum(len(d) for _, d in docs)
    print(f"documents: {len(docs)} kept ({len(train_docs)} train, {len(val_docs)} val); "
          f"{raw_chars / 1e6:.1f} MB raw -> {clean_chars / 1e6:.1f} MB clean text "
          f"({time.time() - t0:.1f}s)", flush=True)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "train.txt"), "w") as f:
        for _, d in train_docs:
            f.write(d + "\n\n")

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((d for _, d in train_docs), trainer=trainer)
    eot_id = tok.token_to_id(EOT)
    vocab = tok.get_vocab_size()
    tok.save(os.path.join(args.out, "tokenizer.json"))
    print(f"tokenizer: byte-level BPE, vocab {vocab}, {EOT} = {eot_id} ({time.time() - t0:.1f}s)", flush=True)

    def encode(split):
        ids = []
        for enc in tok.encode_batch([d for _, d in split]):
            ids.extend(enc.ids)
            ids.append(eot_id)
        return np.asarray(ids, dtype=np.int64)

    train_ids, val_ids = encode(train_docs), encode(val_docs)
    write_tokens(os.path.join(args.out, "train.bin"), train_ids, vocab, eot_id)
    write_tokens(os.path.join(args.out, "val.bin"), val_ids, vocab, eot_id)
    os.remove(os.path.join(args.out, "train.txt"))
    meta = {
        "source": "Debian packages " + ", ".join(sorted(roots)) + " (reStructuredText documentation)",
        "debs": [os.path.basename(d) for d in args.deb],
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "chars": {"raw": raw_chars, "clean": clean_chars},
        "tokens": {"train": int(train_ids.size), "val": int(val_ids.size)},
        "vocab_size": vocab, "eot_id": eot_id, "seed": args.seed,
        "unigram_entropy_nats": {"train": unigram_entropy_nats(train_ids, vocab),
                                 "val": unigram_entropy_nats(val_ids, vocab)},
        "val_documents": [r for r, _ in val_docs],
    }
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"tokens: train {train_ids.size}, val {val_ids.size}; chars/token "
          f"{clean_chars / (train_ids.size + val_ids.size):.2f}; unigram entropy "
          f"{meta['unigram_entropy_nats']['val']:.3f} nats ({time.time() - t0:.1f}s)")


if __name__ == "__main__":
    main()
