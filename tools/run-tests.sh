#!/usr/bin/env bash
# Runs every test suite this machine can run (the README's test command).
#  1. the full meson test set in build/ (unit, reference vs PyTorch, diag,
#     io, fuzz replay, train, python, rust, swig, examples, bindings, abi, cuda);
#     the cuda suite reports SKIP with its reason when there is no GPU;
#  2. the C suites again under AddressSanitizer + UndefinedBehaviorSanitizer
#     (with leak detection) in build-asan/.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${GSINK_TEST_JOBS:-2}
GSINK_ASAN_SUITES=${GSINK_ASAN_SUITES:---suite unit --suite diag --suite fuzz}

meson test -C build --print-errorlogs --num-processes "$jobs" "$@"

if [ "${GSINK_SKIP_ASAN:-0}" != 1 ]; then
  if [ ! -f build-asan/build.ninja ]; then
    meson setup build-asan -Dbuildtype=debugoptimized -Db_sanitize=address,undefined \
      -Db_lundef=false -Dcuda=disabled >/dev/null
  fi
  meson compile -C build-asan
  # Only suites made of C test programs: the Python, Rust and Tcl hosts
  # cannot load an ASan-instrumented library without preloading its runtime.
  meson test -C build-asan --print-errorlogs --num-processes "$jobs" $GSINK_ASAN_SUITES
fi
echo "run-tests: all suites passed"
