#!/usr/bin/env python3
"""Writes sample token ids from a packed token file (tools/corpus/prepare.py
format) as raw little-endian int32, the format `gsink-cli analyze --tokens`
reads. Used for models/default/sample.tokens (from the validation split).

    # the first N tokens of the stream (windows of `gsink-train --windows packed`)
    sample_tokens.py .cache/corpus/docs/val.bin models/default/sample.tokens --count 2049
    # BATCH rows of SEQ tokens, each starting at an end-of-text separator
    # (windows of `gsink-train --windows doc-start`), rows back to back
    sample_tokens.py .cache/corpus/docs/val.bin models/default/sample.tokens --doc-start --batch 8 --seq 256

With --doc-start, gsink-cli reads row b from ids [b*SEQ, (b+1)*SEQ); the target
of a row's last token is then the next row's first id (the separator), one
target in SEQ that differs from the document's own next token.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prepare  # noqa: E402


def doc_start_rows(tokens, eot, batch, seq):
    """The first `batch` windows of `seq` tokens that start at a separator, in file order."""
    starts = [int(p) for p in np.flatnonzero(tokens == eot) if p + seq + 1 <= tokens.size]
    if len(starts) < batch:
        raise ValueError(f"only {len(starts)} separators are followed by {seq} tokens; {batch} rows asked")
    return np.stack([tokens[p:p + seq] for p in starts[:batch]])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--count", type=int, default=8 * 256 + 1)
    ap.add_argument("--doc-start", action="store_true", help="rows that begin at end-of-text separators")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    a = ap.parse_args()
    tokens, _, eot = prepare.read_tokens(a.src)
    if a.doc_start:
        try:
            out = doc_start_rows(tokens, eot, a.batch, a.seq).reshape(-1)
        except ValueError as e:
            sys.exit(f"{a.src}: {e}")
    else:
        if tokens.size < a.count:
            sys.exit(f"{a.src} holds {tokens.size} tokens, fewer than --count {a.count}")
        out = tokens[: a.count]
    out.astype("<i4").tofile(a.dst)
    print(f"wrote {out.size} tokens to {a.dst}")


if __name__ == "__main__":
    main()
