#!/bin/sh
# Cross-language consistency: the same model (preset "micro", seed 1234, one
# thread; or the checkpoint MODEL_PATH) and the same inputs give identical
# numbers (%.9g) through C, Rust, Tcl (SWIG) and Python. C is the reference;
# every other language that can run here must match it exactly. Languages
# whose toolchain is missing are reported as skipped, but at least one must
# run besides C.
# Usage: compare_bindings.sh SOURCE_ROOT BUILD_ROOT [MODEL_PATH]
set -eu
src=${1:?usage: compare_bindings.sh SOURCE_ROOT BUILD_ROOT}
build=${2:?usage: compare_bindings.sh SOURCE_ROOT BUILD_ROOT [MODEL_PATH]}
model=${3:-}
work="$build/tests/examples/bindings${model:+-$(basename "$model")}"
rm -rf "$work"
mkdir -p "$work"
export LD_LIBRARY_PATH="$build/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

# shellcheck disable=SC2086  # $model: one path or nothing
"$build/examples/c/analyze" --numbers $model >"$work/c.txt"
[ -s "$work/c.txt" ] || { echo "compare_bindings: C produced no numbers" >&2; exit 1; }

ran=""
skipped=""
status=0

compare() { # name
    if diff -u "$work/c.txt" "$work/$1.txt"; then
        ran="$ran $1"
    else
        echo "compare_bindings: $1 differs from C" >&2
        status=1
    fi
}

# Rust
if command -v cargo >/dev/null 2>&1; then
    (cd "$src/bindings/rust" &&
        GSINK_LIB_DIR="$build/lib" CARGO_TARGET_DIR="$build/bindings/rust/target" \
        cargo run --offline -q -j2 --example analyze -- --numbers $model) >"$work/rust.txt" || {
        echo "compare_bindings: the Rust example failed" >&2; status=1; }
    [ "$status" -eq 0 ] && compare rust
else
    skipped="$skipped rust(no cargo)"
fi

# Tcl through the SWIG module
module="$build/bindings/swig/gsink.so"
tclsh=$(command -v tclsh8.6 || command -v tclsh || true)
if [ -f "$module" ] && [ -n "$tclsh" ]; then
    "$tclsh" "$src/bindings/swig/analyze.tcl" "$module" --numbers $model >"$work/tcl.txt" || {
        echo "compare_bindings: the Tcl script failed" >&2; status=1; }
    compare tcl
else
    skipped="$skipped tcl(no module or tclsh)"
fi

# Python (ctypes binding)
py=${PYTHON:-}
[ -n "$py" ] || { [ -x "$src/.venv/bin/python" ] && py="$src/.venv/bin/python"; } || true
[ -n "$py" ] || py=$(command -v python3 || true)
if [ -n "$py" ] && [ -f "$src/bindings/python/gsink/__init__.py" ] && "$py" -c 'import numpy' 2>/dev/null; then
    GSINK_LIBRARY="$build/lib/libgsink.so" PYTHONPATH="$src/bindings/python${PYTHONPATH:+:$PYTHONPATH}" \
        "$py" "$src/tests/examples/print_numbers.py" $model >"$work/python.txt" || {
        echo "compare_bindings: the Python script failed" >&2; status=1; }
    compare python
else
    skipped="$skipped python(no interpreter, numpy or package)"
fi

echo "reference (C):"
cat "$work/c.txt"
echo "identical in:${ran:- none}"
[ -z "$skipped" ] || echo "skipped:$skipped"
[ -n "$ran" ] || { echo "compare_bindings: no language besides C could run" >&2; exit 1; }
exit "$status"
