#!/bin/sh
# Runs the Rust crates' tests and example offline against a meson build.
# Usage: run_tests.sh BUILD_ROOT   (meson passes its build root)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: run_tests.sh BUILD_ROOT}
command -v cargo >/dev/null 2>&1 || { echo "cargo not found; skipping" >&2; exit 77; }
export GSINK_LIB_DIR="$build/lib"
export CARGO_TARGET_DIR="$build/bindings/rust/target"
export LD_LIBRARY_PATH="$GSINK_LIB_DIR${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cd "$here"
cargo test --offline -j2 --workspace
cargo run --offline -j2 -q --example analyze
