#!/usr/bin/env bash
# Runs every test suite this machine can run (the README's test command).
#  1. the full meson test set in build/ (unit, reference vs PyTorch, diag,
#     io, fuzz replay, train, mpi, python, rust, swig, examples, bindings, abi, cuda);
#     the cuda suite reports SKIP with its reason when there is no GPU;
#  2. again under AddressSanitizer + UndefinedBehaviorSanitizer in build-asan/:
#     the C suites with leak detection, and the I/O (hostile files) and
#     reference suites through Python with the ASan runtime preloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=${GSINK_TEST_JOBS:-2}
GSINK_ASAN_SUITES=${GSINK_ASAN_SUITES:---suite unit --suite diag --suite fuzz --suite io --suite reference}

meson test -C build --print-errorlogs --num-processes "$jobs" "$@"

if [ "${GSINK_SKIP_ASAN:-0}" != 1 ]; then
  if [ ! -f build-asan/build.ninja ]; then
    meson setup build-asan -Dbuildtype=debugoptimized -Db_sanitize=address,undefined \
      -Db_lundef=false -Dcuda=disabled >/dev/null
  fi
  meson compile -C build-asan
  # The Rust, Tcl and binding suites host the library in programs that are
  # not built with ASan; the Python suites listed here preload its runtime.
  meson test -C build-asan --print-errorlogs --num-processes "$jobs" $GSINK_ASAN_SUITES
fi
echo "run-tests: all suites passed"
