#!/usr/bin/env bash
# The baseline vs V-scale experiment at GPU scale: three arms (baseline, full
# V-scale with learnable theta, backward-only V-scale) of a 27.8M-parameter
# model (d512 L8 H8 d_ff 1408, vocabulary 4096) trained for the same token
# budget on one GPU, as three processes side by side, with diagnostics every
# 250 steps. About 10 minutes on one H200 at the default 3,000 steps.
#
#   bash docs/results/experiment-gpu/run.sh OUT_DIR [STEPS]
#
# Before the arms, a solo phase times each arm alone for SOLO_STEPS steps
# (default 150, after the same warm-up in every arm): the side-by-side run
# measures throughput under time slicing of one GPU by three processes, the
# solo phase what each arm costs by itself. Comparing the two separates an
# arm's own cost (kernels) from what sharing adds (host synchronisations
# wait for a time slice): the question of why full V-scale ran 25% slower.
#
# Needs, in the repository root: a CUDA build (default build-gpu/, which
# `tools/gpu-session.sh suite OUT` configures, compiles and checks in the same
# device call; BUILD=dir for another; the BLIS runtime unpacked by that script
# in /tmp/gsink-kit is put on LD_LIBRARY_PATH when present) and the
# corpus in .cache/corpus/docs-v2 (train.bin, val.bin, meta.json; built here by
# tools/corpus/prepare.py, then carried to the device: the device has no
# network). The analysis (tables, figures) runs afterwards on any machine:
#   .venv/bin/python docs/results/experiment/analyze.py OUT_DIR/runs docs/results/experiment-gpu
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${1:?usage: run.sh OUT_DIR [STEPS]}
STEPS=${2:-3000}
SOLO_STEPS=${SOLO_STEPS:-150}
BUILD=${BUILD:-build-gpu}
KLIB=${GSINK_KIT_DIR:-/tmp/gsink-kit}/usr/lib/x86_64-linux-gnu
[ -d "$KLIB" ] && export LD_LIBRARY_PATH=$KLIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
DATA=${DATA:-.cache/corpus/docs-v2}
PRECISION=${PRECISION:-bf16}
DEVICE=${DEVICE:-cuda}
# ARGS: more gsink-train options, after the shape below (the last one wins):
# a smoke test on the CPU, e.g. DEVICE=cpu PRECISION=fp32 ARGS="--d-model 64 ...".
read -r -a EXTRA <<< "${ARGS:-}"
TRAIN=${TRAIN:-$BUILD/examples/train/gsink-train}
export GSINK_CUDA_MODULE=${GSINK_CUDA_MODULE:-$BUILD/cuda/libgsink-cuda.so}
[ "$DEVICE" = cuda ] || GSINK_CUDA_MODULE=/dev/null
for f in "$TRAIN" "$GSINK_CUDA_MODULE" "$DATA/train.bin" "$DATA/val.bin"; do
  [ -e "$f" ] || { echo "run.sh: missing $f" >&2; exit 1; }
done
mkdir -p "$OUT/runs" "$OUT/solo"
MODES=(off full backward-only)
# The issue's configuration: 32 x 512 tokens per step, lr 1e-3 -> 1e-4.
SHAPE=(--preset small --d-model 512 --layers 8 --heads 8 --kv-heads 8 --d-head 64 --d-ff 1408
       --batch 32 --seq 512 --lr 1e-3 --min-lr 1e-4 --warmup 200 --windows doc-start --seed 1
       --device "$DEVICE" --precision "$PRECISION" --no-progress "${EXTRA[@]}")
{
  echo "# date: $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "# no nvidia-smi"
  echo "# commit: $(git rev-parse --short HEAD 2>/dev/null || cat .gpu-kit/stamp 2>/dev/null | head -1)"
  echo "# steps $STEPS, solo steps $SOLO_STEPS, precision $PRECISION"
} > "$OUT/README.txt"

# 1. Solo: each arm alone (steps 1..SOLO_STEPS; the first 50 are warm-up and
# not timed: tok/s in log.jsonl is per step, the summary takes the median).
for m in "${MODES[@]}"; do
  "$TRAIN" --data "$DATA" --out "$OUT/solo/$m" "${SHAPE[@]}" --vscale "$m" --steps "$SOLO_STEPS" \
      --eval-every 100000 --diag-every 100000 --ckpt-every 100000 --log-every 50 \
      > "$OUT/solo/$m.log" 2>&1
done

# 2. The three arms side by side.
t0=$(date +%s)
pids=()
for m in "${MODES[@]}"; do
  "$TRAIN" --data "$DATA" --out "$OUT/runs/$m" "${SHAPE[@]}" --vscale "$m" --steps "$STEPS" \
      --diag-every 250 --eval-every 250 --ckpt-every 100000 --log-every 100 \
      > "$OUT/runs/$m.log" 2>&1 &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
echo "side_by_side_wall_s: $(( $(date +%s) - t0 ))" >> "$OUT/README.txt"

# 3. Throughput summary: median tokens/s after step 50, solo and side by side.
python3 - "$OUT" >> "$OUT/README.txt" <<'PY'
import json, os, statistics, sys
out = sys.argv[1]
for phase in ("solo", "runs"):
    for m in ("off", "full", "backward-only"):
        p = os.path.join(out, phase, m, "log.jsonl")
        if not os.path.exists(p):
            print(f"{phase:5s} {m:14s} no log"); continue
        rows = [json.loads(x) for x in open(p)]
        tps = [r["tok_s"] for r in rows if "tok_s" in r and r.get("step", 0) > 50]
        last = max((r.get("step", 0) for r in rows), default=0)
        med = statistics.median(tps) if tps else float("nan")
        print(f"{phase:5s} {m:14s} steps {last:6d}  median tok/s {med:10.0f}")
PY
exit $rc
