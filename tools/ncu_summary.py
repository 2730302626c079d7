#!/usr/bin/env python3
"""Kernel-time table from an Nsight Compute CSV export.

    ncu --csv --print-units base --metrics gpu__time_duration.sum PROGRAM ... > run.csv
    python3 tools/ncu_summary.py run.csv [--top 30]

Sums gpu__time_duration.sum per kernel name (template arguments and
parameter lists shortened) and prints, largest first: total milliseconds,
share of all kernel time, launches and mean microseconds. ncu runs every
kernel alone (serialised, caches flushed between kernels), so the total is
the sum of kernel times, not the step's wall time: launch gaps and host work
are not in it. Standard library only (the GPU machine's python3 will do).
"""
import argparse
import csv
import re
import sys
from collections import defaultdict


def short(name):
    """Kernel name without template arguments or parameter list."""
    out, depth = [], 0
    for ch in name:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth = max(depth - 1, 0)
        elif depth == 0:
            out.append(ch)
    s = re.sub(r"\s+", " ", "".join(out)).strip()
    s = re.sub(r"^void ", "", s)
    return s or name[:80]


def rows(path):
    with open(path, newline="") as f:
        lines = f.readlines()
    # ncu prints its own "==PROF==" lines and the program's output before the CSV header
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        sys.exit(f"ncu_summary: no CSV header (a line starting with \"ID\") in {path}")
    return list(csv.DictReader(lines[start:]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=30)
    a = ap.parse_args()
    total = defaultdict(float)
    count = defaultdict(int)
    n = 0
    for r in rows(a.csv):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = r.get("Metric Unit", "ns")
        scale = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0}.get(unit)
        if scale is None:
            sys.exit(f"ncu_summary: unknown unit {unit!r} (run ncu with --print-units base)")
        k = short(r["Kernel Name"])
        total[k] += float(r["Metric Value"].replace(",", "")) * scale
        count[k] += 1
        n += 1
    if not n:
        sys.exit("ncu_summary: no gpu__time_duration.sum rows")
    all_ms = sum(total.values())
    print(f"{n} kernel launches, {len(total)} kernels, {all_ms:.3f} ms of kernel time")
    print(f"{'ms':>9} {'share':>6} {'launches':>8} {'mean us':>9}  kernel")
    for k, ms in sorted(total.items(), key=lambda kv: -kv[1])[:a.top]:
        print(f"{ms:9.3f} {100 * ms / all_ms:5.1f}% {count[k]:8d} {1e3 * ms / count[k]:9.1f}  {k[:110]}")


if __name__ == "__main__":
    main()
