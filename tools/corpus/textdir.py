#!/usr/bin/env python3
"""Tokenises a directory of raw text files into gsink-train token files.

    .venv/bin/python tools/corpus/textdir.py --text DIR --tokenizer tokenizer.json --out OUT
    gsink-train --data OUT --out runs/x ...

Every file under DIR (recursively, in path order; hidden files and directories
skipped; by default only *.txt, *.md, *.rst and *.text, see --suffixes) is one
document: its text (UTF-8, undecodable bytes replaced) is encoded with the
byte-level BPE of --tokenizer and followed by the end-of-text token (--eot,
default <|endoftext|>), as prepare.py packs its corpus. --tokenizer is a
HuggingFace tokenizer.json (as prepare.py writes it; encoded with the
`tokenizers` package) or a GGUF file (tokenizer.ggml.* metadata; encoded with
libgsink's gsink_tokenizer_*, found at --lib, $GSINK_LIB or build*/lib/).
Special tokens' text in a document is matched as the HF tokenizer does. Files of only whitespace are
skipped. The documents are shuffled with --seed and --val-fraction of them
(at least one) are held out: OUT gets train.bin, val.bin (the 40-byte-header
format of prepare.py), tokenizer.json and meta.json.

Encoding runs on all cores (tokenizer.json: the tokenizer's encode_batch
threads; GGUF: one libgsink tokenizer per thread; --threads sets their number)
and is cached: each file's ids are kept in --cache (default
OUT/.token-cache) under a key made of the tokenizer file's SHA-256, the file's
path, size and modification time, so a second run re-encodes only the files
that changed (meta.json and the summary line say how many were cached).
Cache entries of files no longer present are removed.
"""
import argparse
import concurrent.futures
import ctypes
import glob
import hashlib
import json
import os
import random
import shutil
import sys
import threading
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prepare  # noqa: E402

DEFAULT_SUFFIXES = ".txt,.md,.rst,.text"
BATCH_BYTES = 64 << 20  # texts encoded per encode_batch call


def list_files(root, suffixes):
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or (suffixes and not name.endswith(suffixes)):
                continue
            path = os.path.join(dirpath, name)
            if os.path.isfile(path):
                out.append(path)
    return out


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(tok_hash, path, st):
    ident = f"{tok_hash}\0{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()


class GGUFTokenizer:
    """The byte-level BPE of a GGUF file through libgsink, one handle per thread."""
    BUFFER_TOO_SMALL = None

    def __init__(self, path, lib_path, threads):
        if not lib_path:
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
            found = sorted(glob.glob(os.path.join(root, "build*", "lib", "libgsink.so")))
            if not found:
                sys.exit("textdir.py: a GGUF tokenizer needs libgsink: pass --lib or set GSINK_LIB")
            lib_path = found[0]
        L = self.L = ctypes.CDLL(lib_path)
        L.gsink_tokenizer_load_gguf.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
        L.gsink_tokenizer_free.argtypes = [ctypes.c_void_p]
        L.gsink_tokenizer_errmsg.argtypes = [ctypes.c_void_p]
        L.gsink_tokenizer_errmsg.restype = ctypes.c_char_p
        L.gsink_tokenizer_vocab_size.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int32)]
        L.gsink_tokenizer_encode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint,
                                             ctypes.POINTER(ctypes.c_int32), ctypes.c_size_t,
                                             ctypes.POINTER(ctypes.c_size_t)]
        L.gsink_status_str.restype = ctypes.c_char_p
        self.path, self.local, self.handles = path, threading.local(), []
        self.threads = threads or os.cpu_count() or 1
        n = ctypes.c_int32()
        self._check(L.gsink_tokenizer_vocab_size(self._handle(), ctypes.byref(n)), "vocab size")
        self.vocab = n.value

    def _check(self, st, what):
        if st != 0:
            h = getattr(self.local, "h", None)
            msg = self.L.gsink_tokenizer_errmsg(h).decode() if h else ""
            raise RuntimeError(f"{self.path}: {what}: {self.L.gsink_status_str(st).decode()} {msg}")

    def _handle(self):
        h = getattr(self.local, "h", None)
        if h is None:
            h = ctypes.c_void_p()
            st = self.L.gsink_tokenizer_load_gguf(self.path.encode(), ctypes.byref(h))
            if st != 0:
                raise RuntimeError(f"{self.path}: not a GGUF tokenizer: {self.L.gsink_status_str(st).decode()}")
            self.local.h = h
            self.handles.append(h)
        return h

    def encode(self, text):
        data = text.encode("utf-8", errors="replace")
        cap = len(data) + 16  # byte-level BPE: at most one id per byte
        buf = (ctypes.c_int32 * cap)()
        n = ctypes.c_size_t()
        self._check(self.L.gsink_tokenizer_encode(self._handle(), data, len(data), 1, buf, cap, ctypes.byref(n)),
                    "encode")  # 1: GSINK_ENCODE_PARSE_SPECIAL
        return np.frombuffer(buf, dtype=np.int32, count=n.value).copy()

    def token_to_id(self, text):
        ids = self.encode(text)
        return int(ids[0]) if ids.size == 1 else None

    def encode_batch(self, texts):
        with concurrent.futures.ThreadPoolExecutor(self.threads) as ex:  # ctypes calls release the GIL
            return list(ex.map(self.encode, texts))

    def close(self):
        for h in self.handles:
            self.L.gsink_tokenizer_free(h)


class HFTokenizer:
    def __init__(self, path):
        from tokenizers import Tokenizer
        self.tok = Tokenizer.from_file(path)
        self.vocab = self.tok.get_vocab_size()

    def token_to_id(self, text):
        return self.tok.token_to_id(text)

    def encode_batch(self, texts):
        return [np.asarray(e.ids, dtype=np.int32) for e in self.tok.encode_batch(texts, add_special_tokens=False)]

    def close(self):
        pass


def is_gguf(path):
    with open(path, "rb") as f:
        return f.read(4) == b"GGUF"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", required=True, help="directory of text files (one document per file)")
    ap.add_argument("--tokenizer", required=True,
                    help="tokenizer.json (byte-level BPE, e.g. prepare.py's) or a GGUF file with a tokenizer")
    ap.add_argument("--lib", default=os.environ.get("GSINK_LIB"), help="libgsink.so (GGUF tokenizers)")
    ap.add_argument("--out", required=True, help="output directory (train.bin, val.bin, tokenizer.json, meta.json)")
    ap.add_argument("--eot", default=prepare.EOT, help="end-of-text token appended to every document")
    ap.add_argument("--suffixes", default=DEFAULT_SUFFIXES,
                    help=f"comma-separated file name endings read (default {DEFAULT_SUFFIXES}; '' for every file)")
    ap.add_argument("--val-fraction", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--cache", default=None, help="cache directory (default OUT/.token-cache)")
    ap.add_argument("--threads", type=int, default=0, help="encoding threads (default: one per CPU)")
    a = ap.parse_args()
    if a.threads > 0:
        os.environ["RAYON_NUM_THREADS"] = str(a.threads)  # read when the tokenizer's thread pool starts

    t0 = time.time()
    if not os.path.isdir(a.text):
        sys.exit(f"textdir.py: {a.text} is not a directory")
    gguf = is_gguf(a.tokenizer)
    tok = GGUFTokenizer(a.tokenizer, a.lib, a.threads) if gguf else HFTokenizer(a.tokenizer)
    eot_id = tok.token_to_id(a.eot)
    if eot_id is None:
        sys.exit(f"textdir.py: {a.tokenizer} has no token {a.eot!r} (use --eot)")
    vocab = tok.vocab
    tok_hash = sha256_file(a.tokenizer)
    suffixes = tuple(s for s in a.suffixes.split(",") if s)
    files = list_files(a.text, suffixes)
    if not files:
        sys.exit(f"textdir.py: no text files ({', '.join(suffixes) or 'any name'}) under {a.text}")
    cache = a.cache or os.path.join(a.out, ".token-cache")
    os.makedirs(cache, exist_ok=True)

    ids, keys, todo = {}, {}, []
    for path in files:
        key = cache_key(tok_hash, path, os.stat(path))
        keys[path] = key
        try:
            ids[path] = np.load(os.path.join(cache, key + ".npy"), allow_pickle=False)
        except (OSError, ValueError):
            todo.append(path)
    cached = len(files) - len(todo)
    # encode the misses on all cores, in batches of about BATCH_BYTES of text
    i = 0
    while i < len(todo):
        batch, size = [], 0
        while i < len(todo) and (not batch or size < BATCH_BYTES):
            with open(todo[i], "rb") as f:
                text = f.read().decode("utf-8", errors="replace")
            batch.append((todo[i], text))
            size += len(text)
            i += 1
        encs = tok.encode_batch([t for _, t in batch])
        for (path, text), enc in zip(batch, encs):
            arr = enc if text.strip() else np.zeros(0, np.int32)
            ids[path] = arr
            tmp = os.path.join(cache, keys[path] + ".tmp.npy")
            np.save(tmp, arr, allow_pickle=False)
            os.replace(tmp, os.path.join(cache, keys[path] + ".npy"))
    live = {k + ".npy" for k in keys.values()}
    for name in os.listdir(cache):  # entries of removed or changed files
        if name.endswith(".npy") and name not in live:
            os.remove(os.path.join(cache, name))

    docs = [(os.path.relpath(p, a.text), ids[p]) for p in files if ids[p].size]
    if len(docs) < 2:
        sys.exit(f"textdir.py: {len(docs)} non-empty documents under {a.text}; a train and a validation split "
                 f"need at least 2")
    random.Random(a.seed).shuffle(docs)
    n_val = min(len(docs) - 1, max(1, int(round(len(docs) * a.val_fraction))))
    val_docs, train_docs = docs[:n_val], docs[n_val:]

    def pack(split):
        eot = np.array([eot_id], dtype=np.int32)
        return np.concatenate([x for _, d in split for x in (d, eot)])

    os.makedirs(a.out, exist_ok=True)
    train_ids, val_ids = pack(train_docs), pack(val_docs)
    prepare.write_tokens(os.path.join(a.out, "train.bin"), train_ids, vocab, eot_id)
    prepare.write_tokens(os.path.join(a.out, "val.bin"), val_ids, vocab, eot_id)
    tok.close()
    if not gguf and os.path.abspath(a.tokenizer) != os.path.abspath(os.path.join(a.out, "tokenizer.json")):
        shutil.copyfile(a.tokenizer, os.path.join(a.out, "tokenizer.json"))
    meta = {
        "source": "text files under " + os.path.abspath(a.text),
        "tokenizer": os.path.basename(a.tokenizer), "tokenizer_sha256": tok_hash,
        "files": {"read": len(files), "cached": cached, "encoded": len(todo), "empty": len(files) - len(docs)},
        "documents": {"train": len(train_docs), "val": len(val_docs)},
        "tokens": {"train": int(train_ids.size), "val": int(val_ids.size)},
        "vocab_size": vocab, "eot_id": eot_id, "seed": a.seed,
        "unigram_entropy_nats": {"train": prepare.unigram_entropy_nats(train_ids, vocab),
                                 "val": prepare.unigram_entropy_nats(val_ids, vocab)},
        "train_documents": [r for r, _ in train_docs],
        "val_documents": [r for r, _ in val_docs],
    }
    with open(os.path.join(a.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"textdir.py: {len(files)} files ({cached} cached, {len(todo)} encoded), {len(train_docs)} train / "
          f"{len(val_docs)} val documents, {train_ids.size} / {val_ids.size} tokens ({time.time() - t0:.1f}s)")


if __name__ == "__main__":
    main()
