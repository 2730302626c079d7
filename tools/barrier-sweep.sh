#!/usr/bin/env bash
# Removes each __syncthreads() of the CUDA kernels in turn, rebuilds the
# emulated module and runs the emulated parity suite under the three thread
# schedules of the emulation (GSINK_EMU_SCHED = lockstep, warps,
# warps-reverse; docs/cuda.md, "Emulated run"), printing which schedules
# catch the missing barrier. Restores every file at the end (also on ^C).
#   tools/barrier-sweep.sh [BUILD_DIR] [FILE.cu ...]   (default: build, cuda/*.cu)
# Takes ~30 s per barrier on 2 cores.
set -uo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
shift || true
files=("$@")
[ ${#files[@]} -gt 0 ] || files=(cuda/attention.cu cuda/attention_tc.cu cuda/ops.cu)
MODULE=$PWD/$BUILD/tests/cuda/libgsink-cuda-emu.so
TEST=$PWD/$BUILD/tests/cuda/test_cuda_ops
[ -x "$TEST" ] || { echo "barrier-sweep: $TEST not built" >&2; exit 2; }
backup=$(mktemp -d)
restore() {
  for f in "${files[@]}"; do cp "$backup/$(basename "$f")" "$f"; done
  ninja -C "$BUILD" tests/cuda/libgsink-cuda-emu.so >/dev/null 2>&1
  rm -rf "$backup"
}
for f in "${files[@]}"; do cp "$f" "$backup/$(basename "$f")"; done
trap 'restore; exit 130' INT TERM
total=0; caught=0
for f in "${files[@]}"; do
  orig=$backup/$(basename "$f")
  for ln in $(grep -n "__syncthreads();" "$orig" | cut -d: -f1); do
    cp "$orig" "$f"
    sed -i "${ln}s/__syncthreads();/; \/* removed by barrier-sweep *\//" "$f"
    if ! ninja -C "$BUILD" tests/cuda/libgsink-cuda-emu.so >/dev/null 2>&1; then
      echo "$f:$ln: does not compile without it"; continue
    fi
    res="" any=0
    for m in lockstep warps warps-reverse; do
      n=$(GSINK_EMU_SCHED=$m GSINK_CUDA_MODULE=$MODULE CK_FORK=no timeout 600 "$TEST" 2>&1 |
          sed -n 's/.*Checks: [0-9]*, Failures: \([0-9]*\), Errors: \([0-9]*\).*/\1 \2/p' | awk '{print $1 + $2}')
      n=${n:-?}
      [ "$n" != 0 ] && any=1
      res="$res $m:$n"
    done
    total=$((total + 1)); caught=$((caught + any))
    printf '%s:%s failed checks:%s  %s\n' "$f" "$ln" "$res" "$(sed -n "${ln}p" "$orig" | sed 's/^ *//' | cut -c1-70)"
  done
  cp "$orig" "$f"
done
trap - INT TERM
restore
echo "barrier-sweep: $caught of $total barriers caught by at least one schedule"
