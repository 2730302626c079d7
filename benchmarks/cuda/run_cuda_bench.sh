#!/bin/sh
# Runs the CUDA benchmarks and the PyTorch baselines on the same GPU and
# writes everything to docs/results/cuda-bench-<date>.txt.
#   benchmarks/cuda/run_cuda_bench.sh [BUILD_DIR] [PYTHON]
# Needs a build with the CUDA module (meson setup BUILD_DIR -Dcuda=enabled).
set -eu
BUILD=${1:-build}
PY=${2:-python3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT="$ROOT/docs/results/cuda-bench-$(date -u +%Y%m%d-%H%M).txt"
BUILD=$(cd "$BUILD" && pwd)
export GSINK_CUDA_MODULE="$BUILD/cuda/libgsink-cuda.so"
BENCH="$BUILD/benchmarks/cuda/bench_cuda"
TB="$ROOT/benchmarks/cuda/torch_bench.py"
{
  echo "# date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "# host: $(uname -srm)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
  echo "# commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  # MFU against the dense peaks of an H100 SXM (FP32 67, TF32 495, BF16 989
  # TFLOP/s); override with PEAK_FP32 / PEAK_TF32 / PEAK_BF16 for other GPUs.
  for mode in fp32 tf32 bf16; do
    case $mode in
      fp32) flag=""; peak=${PEAK_FP32:-67} ;;
      tf32) flag="--tf32"; peak=${PEAK_TF32:-495} ;;
      bf16) flag="--bf16"; peak=${PEAK_BF16:-989} ;;
    esac
    echo "## $BENCH model --preset paper-0.1b --batch 8 --seq 1024 $flag --peak-tflops $peak"
    "$BENCH" model --preset paper-0.1b --batch 8 --seq 1024 $flag --peak-tflops "$peak"
  done
  # the memory of a training step that keeps no per-layer site gradients
  echo "## $BENCH model --preset paper-0.1b --batch 8 --seq 1024 --bf16 --discard-site-grads"
  "$BENCH" model --preset paper-0.1b --batch 8 --seq 1024 --bf16 --discard-site-grads --peak-tflops "${PEAK_BF16:-989}"
  echo "## memory: paper-0.1b diagnostics at T=8192 (B=1), peak device memory sampled by nvidia-smi"
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > /tmp/gsink-mem.$$ &
  SMI=$!
  "$BENCH" model --preset paper-0.1b --batch 1 --seq 8192 --iters 2 --warmup 1 --diag
  kill $SMI 2>/dev/null || true
  echo "peak_device_mem_mib: $(sort -n /tmp/gsink-mem.$$ | tail -1)"
  rm -f /tmp/gsink-mem.$$
  for attn in eager sdpa; do
    for dt in fp32 tf32 bf16; do
      case $dt in tf32) targs="--dtype fp32 --tf32" ;; *) targs="--dtype $dt" ;; esac
      echo "## torch_bench.py model --attn $attn $targs"
      "$PY" "$TB" model --attn "$attn" $targs --batch 8 --seq 1024
    done
  done
  for dh in 64 128; do
    echo "## attention dh $dh"
    "$BENCH" attention --dh "$dh" --heads $((1024 / dh)) --batch 4 --seq 1024,2048,4096,8192
    "$BENCH" attention --dh "$dh" --heads $((1024 / dh)) --batch 4 --seq 1024,2048,4096,8192 --tf32
    "$BENCH" attention --dh "$dh" --heads $((1024 / dh)) --batch 4 --seq 1024,2048,4096,8192 --bf16
    # the BF16 mma.sync kernels (cuda/attention_mma.cu), blocks of 8 and 4 warps
    for sel in mma mma4; do
      GSINK_CUDA_ATTENTION=$sel "$BENCH" attention --dh "$dh" --heads $((1024 / dh)) --batch 4 --seq 1024,2048,4096,8192 --bf16
    done
    "$PY" "$TB" attention --dh "$dh" --heads $((1024 / dh)) --batch 4 --seq 1024,2048,4096,8192
  done
} 2>&1 | tee "$OUT"
echo "wrote $OUT"
