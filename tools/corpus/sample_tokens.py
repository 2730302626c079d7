#!/usr/bin/env python3
"""Writes the first N tokens of a packed token file (tools/corpus/prepare.py
format) as raw little-endian int32, the format `gsink-cli analyze --tokens`
reads. Used for models/default/sample.tokens (from the validation split).

    sample_tokens.py .cache/corpus/docs/val.bin models/default/sample.tokens --count 2049
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import prepare  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--count", type=int, default=8 * 256 + 1)
    a = ap.parse_args()
    tokens = prepare.read_tokens(a.src)[0]
    if tokens.size < a.count:
        sys.exit(f"{a.src} holds {tokens.size} tokens, fewer than --count {a.count}")
    tokens[: a.count].astype("<i4").tofile(a.dst)
    print(f"wrote {a.count} tokens to {a.dst}")


if __name__ == "__main__":
    main()
