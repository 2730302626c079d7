#!/usr/bin/env python3
"""Hostile sizes at a million entries: a GGUF with 1,000,000 tensor infos
(loaded, and with one duplicate name: refused) and a safetensors header with
1,000,000 extra zero-size entries (loaded). Prints the seconds each takes
(the files are built with the hostile-file test's helpers).

  GSINK_LIBRARY=build/lib/libgsink.so PYTHONPATH=bindings/python \\
  .venv/bin/python benchmarks/hostile_scale.py [N]"""
import os
import pathlib
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "io"))

import test_hostile as th  # noqa: E402


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    tmp = pathlib.Path(tempfile.mkdtemp())
    try:
        for label, path in (("gguf: %d tensor infos" % n, th.write(tmp, "many.gguf", th.big_gguf(n))),
                            ("gguf: %d tensor infos, one name twice" % n,
                             th.write(tmp, "dup.gguf", th.big_gguf(n, dup=True)))):
            res, dt = th.timed_load(path)
            print("%-48s %6.2f s  %s" % (label, dt, "loaded" if res is None else "refused: %s" % res[1][:60]))
        extra = {"extra.%07d" % i: {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(n)}
        d = th.hf_dir(tmp, th.st_bytes(th.hf_tensors(), header_override=extra), name="st")
        res, dt = th.timed_load(d)
        print("%-48s %6.2f s  %s" % ("safetensors: %d extra zero-size entries" % n, dt,
                                      "loaded" if res is None else "refused: %s" % res[1][:60]))
    finally:
        shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
