#!/bin/sh
# Forward+backward benchmark of the 21M configuration (bench-21m, B4 T256):
# libgsink (C), the same model in PyTorch on the same BLIS, and the Python
# binding's overhead. Prints tokens/s for both and the ratio.
#
#   benchmarks/run_fwd_bwd.sh [BUILD_DIR] [ITERS]
#
# BUILD_DIR defaults to build (it must hold benchmarks/bench_fwd_bwd);
# PYTHON defaults to .venv/bin/python or python3 (needs torch and numpy);
# THREADS (default: all CPUs) is used by both sides.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD=${1:-build}
ITERS=${2:-10}
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
THREADS=${THREADS:-$(nproc)}
BENCH="$BUILD/benchmarks/bench_fwd_bwd"
[ -x "$BENCH" ] || { echo "run_fwd_bwd.sh: $BENCH not built (meson compile -C $BUILD)" >&2; exit 1; }

echo "== machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== libgsink (C)"
C_OUT=$("$BENCH" --iters "$ITERS" --threads "$THREADS")
echo "$C_OUT"
# The kernel family libgsink chose; torch's BLIS is set to the same one.
ARCH=$(echo "$C_OUT" | sed -n 's/.*BLIS \([a-z0-9]*\) kernels.*/\1/p' | head -n1)

echo "== PyTorch (same BLIS, ${ARCH:-default} kernels), libgsink interleaved in the same process"
T_OUT=$(GSINK_LIBRARY="$BUILD/lib/libgsink.so" PYTHONPATH="$ROOT/bindings/python" \
        "$PYTHON" "$ROOT/benchmarks/torch_fwd_bwd.py" --iters "$ITERS" --threads "$THREADS" \
        ${ARCH:+--blis-arch "$ARCH"} --with-gsink 2>&1)
echo "$T_OUT"

echo "== Python binding overhead"
P_OUT=$(GSINK_LIBRARY="$BUILD/lib/libgsink.so" PYTHONPATH="$ROOT/bindings/python" \
        "$PYTHON" "$ROOT/benchmarks/py_overhead.py" --iters "$ITERS" --threads "$THREADS")
echo "$P_OUT"

C_TPS=$(echo "$C_OUT" | sed -n 's/^gsink fwd+bwd:.*tokens\/s \([0-9.]*\).*/\1/p')
I_RATIO=$(echo "$T_OUT" | sed -n 's/^interleaved ratio.*: \([0-9.]*\)x.*/\1/p')
T_TPS=$(echo "$T_OUT" | sed -n 's/^torch fwd+bwd:.*tokens\/s \([0-9.]*\).*/\1/p')
C_MS=$(echo "$C_OUT" | sed -n 's/^gsink fwd+bwd: median \([0-9.]*\) ms.*/\1/p')
B_MS=$(echo "$P_OUT" | sed -n 's/^binding fwd+bwd: *median \([0-9.]*\) ms.*/\1/p')
echo "== summary (medians of $ITERS iterations, $THREADS threads)"
awk -v c="$C_TPS" -v t="$T_TPS" -v cm="$C_MS" -v bm="$B_MS" -v ir="$I_RATIO" 'BEGIN {
    printf "libgsink (C program)  %8.0f tokens/s\n", c
    printf "PyTorch               %8.0f tokens/s\n", t
    printf "ratio libgsink/PyTorch: %.2fx (separate runs), %sx (interleaved in one process)\n", c / t, ir
    printf "Python binding vs C program: %+.2f%% (separate processes)\n", 100 * (bm - cm) / cm
}'
