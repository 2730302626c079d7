#!/usr/bin/env bash
# One GPU session on a lent machine (see docs/gpu-session.md): builds libgsink
# with the CUDA module against the Debian packages in .gpu-kit/ (prepared by
# tools/gpu-kit.sh) and runs the CUDA suite, compute-sanitizer memcheck and
# racecheck on test_cuda_ops, and the CUDA benchmarks.
#
#   tools/gpu-session.sh [all|test|bench|STEP,...] OUTDIR [--emulate]
#     test   build + suite (meson test --suite cuda --suite cuda-loader)
#            + memcheck (test_cuda_ops; its deliberate out-of-memory case alone,
#            API errors off) + racecheck (the attention cases); each
#            passes only on a summary of 0 errors / 0 hazards
#     bench  build + bench (benchmarks/cuda/run_cuda_bench.sh)
#     all    both (default; may not fit one 10-minute command)
#     analysis  build + the analysis step against HuggingFace
#            (benchmarks/cuda/analysis_step.py) and the protocol's device
#            memory (benchmarks/protocol_memory.py --device cuda); not in all
#     torch  build + gsink.torch on CUDA tensors with the machine's torch 2.x
#            (bindings/python/tests/test_torch.py) and attention_with_stats
#            against SDPA + a statistics pass (benchmarks/cuda/
#            attention_stats_torch.py); not in all
#     profile  build + Nsight Compute kernel times of one paper-0.1b 8 x 1024
#            training step in bf16 and fp32 (bench_cuda model under ncu,
#            gpu__time_duration.sum only; tools/ncu_summary.py tables in
#            OUTDIR/profile-*.txt), then the step's GEMMs alone per operand
#            type (benchmarks/cuda/gemm_dtypes.cu, OUTDIR/gemm-dtypes.txt);
#            not in all
#     STEP,...  some of suite, memcheck, racecheck, bench, analysis, torch, profile
#     --emulate (or GSINK_EMULATE=1): no GPU needed; the same flow against the
#              emulated module (tests/cuda/libgsink-cuda-emu.so, suite
#              cuda-emu); the sanitizer steps become a plain run of one test
#              case and the benchmarks are skipped. For checking this script.
#
# Every step logs to a file under OUTDIR (build.log, suite.log, memcheck.log,
# racecheck.log, bench.log, plus the benchmark's cuda-bench-*.txt);
# OUTDIR/summary.txt holds the machine, the source and status/time per step,
# and is printed at the end. A failed step does not stop the others (those
# that need a build are skipped when it failed). Every step runs under
# `timeout`, inside GSINK_SESSION_BUDGET seconds (default 540) for the phase.
# Knobs: GSINK_BUILD (build dir, default build-gpu[-emu] in the repository,
# reused when already configured), GSINK_KIT_DIR (/tmp/gsink-kit),
# GSINK_PYTHON (python with torch for the benchmarks), GSINK_MESON_ARGS (more
# meson setup options), GSINK_SESSION_CUDA (-Dcuda: default enabled; when
# emulating, enabled if nvcc exists), GSINK_GPU_ARCHS (90), GSINK_SAN_CASE
# (CK_RUN_CASE for the sanitizer runs: one memcheck case, or the racecheck
# cases; CASE@mma runs CASE with GSINK_CUDA_ATTENTION=mma), GSINK_RACECHECK_CASES
# (default: attention attention_tf32 attention_bf16 attention_bf16@mma),
# GSINK_CAP_<STEP> (a step's limit, s).
set -uo pipefail
# shellcheck disable=SC2317  # step_* functions run through `bash $0 __step NAME`

if [ "${1:-}" != __step ]; then
  SELF=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
  ROOT=$(cd "$(dirname "$0")/.." && pwd)
  cd "$ROOT" || exit 2
  phase=all
  out=""
  emulate=${GSINK_EMULATE:-0}
  for a in "$@"; do
    case "$a" in
      all|test|bench|suite*|memcheck*|racecheck*|analysis*|torch*|profile*) phase=$a ;;
      --emulate) emulate=1 ;;
      -h|--help) sed -n '2,33p' "$SELF"; exit 0 ;;
      -*) echo "gpu-session: unknown option $a" >&2; exit 2 ;;
      *) out=$a ;;
    esac
  done
  out=${out:-${OUT:-}}
  if [ -z "$out" ]; then
    echo "usage: tools/gpu-session.sh [all|test|bench|STEP,...] OUTDIR [--emulate]" >&2
    exit 2
  fi
  mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2

  T0=$(date +%s)
  BUDGET=${GSINK_SESSION_BUDGET:-540}
  DEADLINE=$((T0 + BUDGET))
  KIT_SRC=${GSINK_KIT:-$ROOT/.gpu-kit}
  KIT=${GSINK_KIT_DIR:-/tmp/gsink-kit}
  KLIB=$KIT/usr/lib/x86_64-linux-gnu
  if [ "$emulate" = 1 ]; then BUILD=${GSINK_BUILD:-$ROOT/build-gpu-emu}; else BUILD=${GSINK_BUILD:-$ROOT/build-gpu}; fi
  mkdir -p "$(dirname "$BUILD")" && BUILD=$(cd "$(dirname "$BUILD")" && pwd)/$(basename "$BUILD")
  JOBS=$(nproc 2>/dev/null || echo 4)
  SUMMARY=$out/summary.txt
  BUILD_LOG=$out/build.log

  export PATH=/usr/local/cuda/bin:$PATH
  [ -d /opt/torch/.venv/bin ] && export PATH=$PATH:/opt/torch/.venv/bin
  MESON_CMD=meson
  command -v meson >/dev/null 2>&1 || MESON_CMD="python3 -m mesonbuild.mesonmain"
  if ! command -v ninja >/dev/null 2>&1 && [ -z "${NINJA:-}" ]; then
    nj=$(python3 -c 'import ninja, os; print(os.path.join(ninja.BIN_DIR, "ninja"))' 2>/dev/null) && export NINJA=$nj
  fi
  PY=""
  for p in ${GSINK_PYTHON:-} python3 /opt/torch/.venv/bin/python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import torch' >/dev/null 2>&1; then PY=$(command -v "$p"); break; fi
  done
  cuda_opt=${GSINK_SESSION_CUDA:-}
  if [ -z "$cuda_opt" ]; then
    cuda_opt=enabled
    if [ "$emulate" = 1 ] && ! command -v nvcc >/dev/null 2>&1; then cuda_opt=disabled; fi
  fi
  if [ "$emulate" = 1 ]; then
    MODULE=$BUILD/tests/cuda/libgsink-cuda-emu.so
    TEST_SUITES="--suite cuda --suite cuda-loader --suite cuda-emu"
  else
    MODULE=$BUILD/cuda/libgsink-cuda.so
    TEST_SUITES="--suite cuda --suite cuda-loader"
  fi
  # The steps run as `timeout ... bash $0 __step FUNCTION CTX` (timeout needs
  # a program, and kills the step's whole process group); CTX holds these.
  CTX=$(mktemp /tmp/gsink-session-ctx.XXXXXX)
  declare -p ROOT out emulate KIT_SRC KIT KLIB BUILD JOBS BUILD_LOG MESON_CMD PY cuda_opt MODULE TEST_SUITES > "$CTX"
  trap 'rm -f "$CTX"' EXIT
else
  # shellcheck disable=SC1090
  source "$3"
fi

# ---------------------------------------------------------------- step bodies
unpack_deb() { # DEB DEST: dpkg-deb, else ar + tar, else Python (ar + tarfile)
  if command -v dpkg-deb >/dev/null 2>&1; then
    dpkg-deb -x "$1" "$2"
  elif command -v ar >/dev/null 2>&1; then
    local tmp rc; tmp=$(mktemp -d)
    (cd "$tmp" && ar x "$1") && tar -xf "$tmp"/data.tar.* -C "$2"
    rc=$?; rm -rf "$tmp"; return $rc
  else
    python3 - "$1" "$2" <<'PY'
import io, sys, tarfile
data = open(sys.argv[1], "rb").read()
assert data[:8] == b"!<arch>\n", "not a .deb"
pos = 8
while pos + 60 <= len(data):
    name = data[pos:pos + 16].decode().strip().rstrip("/")
    size = int(data[pos + 48:pos + 58].decode().strip())
    if name.startswith("data.tar"):
        tarfile.open(fileobj=io.BytesIO(data[pos + 60:pos + 60 + size]), mode="r:*").extractall(sys.argv[2])
        break
    pos += 60 + size + (size & 1)
else:
    sys.exit("no data.tar member")
PY
  fi
}
step_kit() {
  set -e
  ls "$KIT_SRC"/*.deb >/dev/null || { echo "no kit in $KIT_SRC: run tools/gpu-kit.sh first and carry .gpu-kit"; exit 1; }
  rm -rf "$KIT"; mkdir -p "$KIT/fallback"
  local d
  for d in "$KIT_SRC"/*.deb; do
    case $(basename "$d") in
      libgomp1_*) unpack_deb "$d" "$KIT/fallback" ;;  # only if the system lacks libgomp
      *) unpack_deb "$d" "$KIT" ;;
    esac
    echo "unpacked $(basename "$d") ($(command -v dpkg-deb >/dev/null && echo dpkg-deb || echo fallback))"
  done
  # Debian's libblis.so(.4) and blis.h links are made by update-alternatives,
  # which an extracted tree lacks.
  ln -sf blis-openmp/libblis.so.4 "$KLIB/libblis.so.4"
  ln -sf blis-openmp/libblis.so.4 "$KLIB/libblis.so"
  ln -sf blis-openmp/blis.h "$KIT/usr/include/x86_64-linux-gnu/blis.h"
  sed -i "s|^prefix=/usr\$|prefix=$KIT/usr|" "$KLIB"/pkgconfig/*.pc  # for a pkg-config, if any
  ls -l "$KLIB" "$KLIB/blis-openmp"
}
step_setup() {
  if [ -f "$BUILD/build.ninja" ]; then
    echo "reusing $BUILD (configured by an earlier call)"
    exit 0
  fi
  rm -rf "$BUILD"
  # shellcheck disable=SC2086
  $MESON_CMD setup "$BUILD" -Dbuildtype=release -Dcuda="$cuda_opt" \
    -Dgpu_archs="${GSINK_GPU_ARCHS:-90}" \
    -Dblis_include_dir="$KIT/usr/include/x86_64-linux-gnu/blis-openmp" \
    -Dblis_lib_dir="$KLIB/blis-openmp" -Dc_link_args="-L$KLIB" ${GSINK_MESON_ARGS:-}
  local rc=$?
  if ((rc)); then echo "---- meson-log.txt (end)"; tail -150 "$BUILD/meson-logs/meson-log.txt" 2>/dev/null; fi
  exit $rc
}
step_compile() {
  $MESON_CMD compile -C "$BUILD" -j "$JOBS" || exit $?
  # Which libcheck and check.h a link like the tests' takes (ld --trace, gcc -H).
  echo "---- check: $(echo 'int main(void) { return 0; }' | gcc -x c - -o /dev/null -L"$KLIB" -Wl,--trace -lcheck_pic 2>&1 |
                       grep -m1 -o '/[^)]*libcheck_pic\.a')," \
       "$(echo '#include <check.h>' | gcc -E -H -x c - 2>&1 >/dev/null | grep -m1 'check\.h')"
  echo "---- ldd test_cuda_ops (libblis, libsubunit, libgomp)"
  ldd "$BUILD/tests/cuda/test_cuda_ops" | grep -E 'blis|subunit|gomp|not found'
  true
}
step_suite() {
  local console=/tmp/gsink-suite.$$ rc
  # shellcheck disable=SC2086
  $MESON_CMD test -C "$BUILD" $TEST_SUITES --print-errorlogs --num-processes 1 2>&1 | tee "$console"
  rc=${PIPESTATUS[0]}
  echo "---- $BUILD/meson-logs/testlog.txt"
  sed '/^Inherited environment:/d' "$BUILD/meson-logs/testlog.txt" 2>/dev/null
  # On the GPU machine a skipped cuda_ops (no usable device) is a failure.
  # (meson 1.0 prints "libgsink:cuda / cuda_ops SKIP", 1.12 "cuda - libgsink:cuda_ops SKIP".)
  if [ "$emulate" != 1 ] && grep -qE 'cuda_ops +SKIP' "$console"; then
    echo "gpu-session: cuda_ops was SKIPPED: the CUDA suite did not run on a GPU"
    ((rc)) || rc=1
  fi
  rm -f "$console"
  exit $rc
}
# A sanitizer run passes only when the test run passed AND compute-sanitizer's
# summary reads exactly 0 errors (memcheck) or 0 hazards (racecheck): its exit
# code alone would let a real error hide behind an expected one.
# memcheck: the whole test_cuda_ops except out_of_memory (tag
# deliberate_failure: it fails device
# allocations on purpose), then out_of_memory alone with API-error reporting
# off (its memory accesses are still checked). racecheck: the attention cases
# (FP32 SIMT, TF32 and BF16 tensor cores, and BF16 on the mma.sync kernels:
# CASE@mma sets GSINK_CUDA_ATTENTION=mma, read at backend creation), one run
# each.
GSINK_RACECHECK_CASES=${GSINK_RACECHECK_CASES:-attention attention_tf32 attention_bf16 attention_bf16@mma}
san_run() { # TOOL EXPECT_REGEX CASE_ENV [sanitizer options...]: one run, judged
  local tool=$1 expect=$2 case_env=$3 log rc; shift 3
  log=$(mktemp /tmp/gsink-san.XXXXXX)
  echo "---- compute-sanitizer --tool $tool $* ($case_env)"
  # shellcheck disable=SC2086
  env GSINK_CUDA_MODULE="$MODULE" CK_FORK=no $case_env \
    "$CS" --tool "$tool" --error-exitcode 86 "$@" "$BUILD/tests/cuda/test_cuda_ops" > "$log" 2>&1
  rc=$?
  cat "$log"
  if ((rc)); then echo "gpu-session: $tool run ($case_env) exited with $rc"; rm -f "$log"; return 1; fi
  if ! grep -qE '^[0-9]+%: Checks: [1-9][0-9]*, Failures: 0, Errors: 0' "$log"; then
    echo "gpu-session: $tool run ($case_env): the tests did not all pass (or none ran)"; rm -f "$log"; return 1
  fi
  if ! grep -qE "$expect" "$log"; then
    echo "gpu-session: $tool run ($case_env): the summary is not '$expect'"; rm -f "$log"; return 1
  fi
  rm -f "$log"
}
step_sanitizer() { # memcheck|racecheck
  if [ "$emulate" = 1 ]; then
    echo "emulated: no compute-sanitizer here; plain run of CK_RUN_CASE=${GSINK_SAN_CASE:-rmsnorm} on the emulated module"
    exec env GSINK_CUDA_MODULE="$MODULE" CK_FORK=no OMP_NUM_THREADS=1 CK_RUN_CASE="${GSINK_SAN_CASE:-rmsnorm}" \
      "$BUILD/tests/cuda/test_cuda_ops"
  fi
  CS=$(command -v compute-sanitizer || ls /usr/local/cuda/compute-sanitizer/compute-sanitizer 2>/dev/null) ||
    { echo "gpu-session: compute-sanitizer not found"; exit 127; }
  "$CS" --version | tail -1
  local fail=0 c
  if [ "$1" = memcheck ]; then
    if [ -n "${GSINK_SAN_CASE:-}" ]; then
      san_run memcheck 'ERROR SUMMARY: 0 errors' "CK_RUN_CASE=$GSINK_SAN_CASE" || fail=1
    else
      san_run memcheck 'ERROR SUMMARY: 0 errors' "CK_EXCLUDE_TAGS=deliberate_failure" || fail=1
      san_run memcheck 'ERROR SUMMARY: 0 errors' "CK_INCLUDE_TAGS=deliberate_failure" \
        --report-api-errors no || fail=1
    fi
  else
    for c in ${GSINK_SAN_CASE:-$GSINK_RACECHECK_CASES}; do
      local ce="CK_RUN_CASE=$c"
      case $c in *@mma) ce="CK_RUN_CASE=${c%@mma} GSINK_CUDA_ATTENTION=mma" ;; esac
      san_run racecheck 'RACECHECK SUMMARY: 0 hazards displayed \(0 errors, 0 warnings\)' "$ce" || fail=1
    done
  fi
  exit $fail
}
step_memcheck() { step_sanitizer memcheck; }
step_racecheck() { step_sanitizer racecheck; }
step_bench() {
  local start=/tmp/gsink-bench-start.$$ rc f
  touch "$start"
  echo "python: ${PY:-none with torch; using python3}"
  sh "$ROOT/benchmarks/cuda/run_cuda_bench.sh" "$BUILD" "${PY:-python3}"
  rc=$?
  f=$(find "$ROOT/docs/results" -maxdepth 1 -name 'cuda-bench-*.txt' -newer "$start" 2>/dev/null | sort | tail -1)
  rm -f "$start"
  if [ -z "$f" ]; then echo "gpu-session: no docs/results/cuda-bench-*.txt written"; exit 1; fi
  cp "$f" "$out/" && echo "copied $f to $out/"
  # run_cuda_bench.sh stops at the first failure but exits with tee's status.
  local n; n=$(grep -c '^## ' "$f")
  if ((n < 9)); then echo "gpu-session: the benchmark stopped after $n of 9 sections"; ((rc)) || rc=1; fi
  exit $rc
}

step_analysis() {
  [ -n "$PY" ] || { echo "no python with torch"; exit 77; }
  export GSINK_LIBRARY=$BUILD/lib/libgsink.so GSINK_CUDA_MODULE=$MODULE PYTHONPATH=$ROOT/bindings/python
  local rc=0
  "$PY" "$ROOT/benchmarks/cuda/analysis_step.py" 2>&1 | tee "$out/analysis-step.txt"
  ((PIPESTATUS[0])) && rc=1
  "$PY" "$ROOT/benchmarks/protocol_memory.py" --device cuda --seq 2048 --layers 1,2 --flags new 2>&1 |
    tee "$out/protocol-memory-cuda.txt"
  ((PIPESTATUS[0])) && rc=1
  exit $rc
}

step_torch() {
  [ -n "$PY" ] || { echo "no python with torch"; exit 77; }
  export GSINK_LIBRARY=$BUILD/lib/libgsink.so GSINK_CUDA_MODULE=$MODULE PYTHONPATH=$ROOT/bindings/python
  local rc=0
  if "$PY" -c 'import pytest' 2>/dev/null; then
    "$PY" -m pytest -q -rs -p no:cacheprovider "$ROOT/bindings/python/tests/test_torch.py" || rc=1
  else
    echo "no pytest for $PY: test_torch.py skipped"
  fi
  "$PY" "$ROOT/benchmarks/cuda/attention_stats_torch.py" 2>&1 | tee "$out/attention-stats-torch.txt"
  ((PIPESTATUS[0])) && rc=1
  exit $rc
}

# Kernel times of one training step (warm-up 0, one step: each kernel once,
# serialised by ncu) per precision; the table sums them per kernel.
step_profile() {
  command -v ncu >/dev/null || { echo "no ncu on PATH"; exit 77; }
  local rc=0 mode flag csv
  for mode in bf16 fp32; do
    case $mode in bf16) flag=--bf16 ;; *) flag="" ;; esac
    csv=$out/profile-$mode.csv
    echo "---- ncu bench_cuda model --preset paper-0.1b --batch 8 --seq 1024 $flag --iters 1 --warmup 0"
    env GSINK_CUDA_MODULE="$MODULE" ncu --csv --print-units base --metrics gpu__time_duration.sum \
      "$BUILD/benchmarks/cuda/bench_cuda" model --preset paper-0.1b --batch 8 --seq 1024 $flag \
      --iters 1 --warmup 0 > "$csv" 2> "$out/profile-$mode.err" || rc=1
    tail -3 "$out/profile-$mode.err"
    python3 "$ROOT/tools/ncu_summary.py" "$csv" --top 40 | tee "$out/profile-$mode.txt" || rc=1
    gzip -f "$csv"
  done
  # the step's GEMMs alone per operand type: what bf16 storage would save
  echo "---- gemm_dtypes (paper-0.1b, 8 x 1024)"
  "$BUILD/benchmarks/cuda/gemm_dtypes" --iters 15 2>&1 | tee "$out/gemm-dtypes.txt"
  ((PIPESTATUS[0])) && rc=1
  exit $rc
}

if [ "${1:-}" = __step ]; then
  "step_$2"
  exit $?
fi

# ---------------------------------------------------------------- runner
declare -A STATUS
: > "$SUMMARY"
: > "$BUILD_LOG"
STEPS=$out/.steps
row() { printf '%-10s %-8s %4s %8s  %-14s %s\n' "$@" >> "$STEPS"; }
: > "$STEPS"
row step status rc seconds log note
# run NAME LOG CAP: the step under timeout (its cap, at most what is left of
# the budget less 20 s for the summary), appended to LOG.
run() {
  local name=$1 log=$2 cap=$3 capvar t s e rc st secs
  capvar="GSINK_CAP_${name^^}"
  cap=${!capvar:-$cap}
  t=$((DEADLINE - $(date +%s) - 20))
  ((t > cap)) && t=$cap
  if ((t < 15)); then
    skip "$name" "$log" "no time left in the ${BUDGET}s budget"
    return
  fi
  echo "==== $name (limit ${t}s, started $(date -u +%H:%M:%SZ))" >> "$log"
  echo "gpu-session: $name (limit ${t}s) ..."
  s=$(date +%s%N)
  timeout -k 10 "$t" bash "$SELF" __step "$name" "$CTX" >> "$log" 2>&1 < /dev/null
  rc=$?
  e=$(date +%s%N)
  case $rc in 0) st=PASS ;; 77) st=SKIP ;; 124|137) st=TIMEOUT ;; *) st=FAIL ;; esac
  STATUS[$name]=$st
  secs=$(awk -v a="$s" -v b="$e" 'BEGIN { printf "%.1f", (b - a) / 1e9 }')
  echo "==== $name: $st (rc $rc, ${secs}s)" >> "$log"
  row "$name" "$st" "$rc" "$secs" "$(basename "$log")" "$(note "$name" "$log" | paste -sd ' ')"
  echo "gpu-session: $name: $st (rc $rc, ${secs}s)"
}
skip() { # NAME LOG REASON
  STATUS[$1]=SKIP
  row "$1" SKIP - 0 "$(basename "$2")" "$3"
  echo "gpu-session: $1: SKIP ($3)"
}
note() { # a one-line result read off the step's log
  case $1 in
    suite) sed '/^---- /q' "$2" | grep -E '^(Ok|Fail|Skipped|Timeout):' | tail -4 | sed -E 's/:[[:space:]]+/ /; s/[[:space:]]+$//' |
          paste -sd ',' | sed 's/,/, /g' ;;
    memcheck|racecheck)
      { grep -E '^[0-9]+%: Checks|ERROR SUMMARY|RACECHECK SUMMARY' "$2"; } |
        sed 's/^========= //' | paste -sd ';' ;;
    torch) { grep -E '^[0-9]+ (passed|failed)|passed|failed' "$2" | tail -1; grep -E '^worst' "$out/attention-stats-torch.txt" 2>/dev/null; } | paste -sd ';' ;;
    analysis) grep -E '^gsink (fp32|tf32|bf16):' "$out/analysis-step.txt" 2>/dev/null | cut -c1-120 | paste -sd ';' ;;
    profile) head -1 "$out"/profile-*.txt 2>/dev/null | grep -v '^==>' | grep -v '^$' | paste -sd ';' ;;
    bench) [ -n "$(ls "$out"/cuda-bench-*.txt 2>/dev/null)" ] &&
           echo "$(grep -c '^## ' "$out"/cuda-bench-*.txt | tail -1)/9 sections in $(basename "$(ls "$out"/cuda-bench-*.txt | tail -1)")" ;;
    compile) grep -E '(blis|subunit)[^ ]* => ' "$2" | awk '{ printf "%s%s", (NR > 1 ? ", " : ""), $3 }'
             grep -m1 -o -- '---- check: [^,]*' "$2" | sed 's/^---- check: /, /' ;;
  esac
  if [ "${STATUS[$1]}" = FAIL ] || [ "${STATUS[$1]}" = TIMEOUT ]; then # and the log's last word
    grep -vE '^(====|---- )' "$2" | grep -v '^[[:space:]]*$' | tail -1 | cut -c1-100 | sed 's/^/; last line: /'
  fi
}
built() { [ "${STATUS[compile]:-}" = PASS ]; }

case $phase in
  all) want=suite,memcheck,racecheck,bench ;;
  test) want=suite,memcheck,racecheck ;;
  *) want=$phase ;;
esac
wants() { [[ ",$want," == *",$1,"* ]]; }

run kit "$BUILD_LOG" 60
if [ "${STATUS[kit]}" = PASS ]; then
  export CPATH=$KIT/usr/include${CPATH:+:$CPATH}
  export LIBRARY_PATH=$KLIB${LIBRARY_PATH:+:$LIBRARY_PATH}
  export LD_LIBRARY_PATH=$KLIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export PKG_CONFIG_PATH=$KLIB/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
  # BLIS's OpenMP runtime: the system's libgomp, else Debian's from the kit.
  if ! { ldconfig -p 2>/dev/null | grep -q 'libgomp\.so\.1 '; } &&
     [ ! -e "$(gcc -print-file-name=libgomp.so.1 2>/dev/null)" ]; then
    export LD_LIBRARY_PATH=$LD_LIBRARY_PATH:$KIT/fallback/usr/lib/x86_64-linux-gnu
    echo "libgomp.so.1 not on this system: using the kit's" | tee -a "$BUILD_LOG"
  fi
  run setup "$BUILD_LOG" 120
else
  skip setup "$BUILD_LOG" "no kit"
fi
if [ "${STATUS[setup]}" = PASS ]; then run compile "$BUILD_LOG" 420; else skip compile "$BUILD_LOG" "setup failed"; fi
for s in suite memcheck racecheck; do
  wants "$s" || continue
  if built; then run "$s" "$out/$s.log" 300; else skip "$s" "$out/$s.log" "no build"; fi
done
# gpu_step NAME CAP WHY: a step that needs a real GPU (skipped with WHY when
# emulating) and the build.
gpu_step() {
  wants "$1" || return 0
  if [ "$emulate" = 1 ]; then skip "$1" "$out/$1.log" "emulated: $3"
  elif built; then run "$1" "$out/$1.log" "$2"
  else skip "$1" "$out/$1.log" "no build"; fi
}
gpu_step bench 540 "the benchmarks need a GPU"
gpu_step torch 300 "PyTorch CUDA tensors need a GPU"
gpu_step profile 300 "ncu needs a GPU"
gpu_step analysis 420 "the analysis benchmark needs a GPU"

# ---------------------------------------------------------------- summary
src_line() {
  if git -C "$ROOT" rev-parse HEAD >/dev/null 2>&1; then
    echo "$(git -C "$ROOT" log -1 --format='%H %cd %<(50,trunc)%s' --date=short | sed 's/ *$//')" \
         "($(git -C "$ROOT" status --porcelain --untracked-files=no | wc -l) tracked files modified)"
  elif [ -f "$KIT_SRC/stamp" ]; then
    local bad
    bad=$(cd "$ROOT" && sha256sum -c --quiet "$KIT_SRC/manifest.sha256" 2>/dev/null | wc -l)
    echo "$(sed -n 's/^commit: //p' "$KIT_SRC/stamp") [no .git here; from .gpu-kit/stamp, $(sed -n 's/^local_changes: //p' "$KIT_SRC/stamp")]"
    if ((bad)); then echo "WARNING: $bad files differ from the stamp (re-run tools/gpu-kit.sh before the call)"
    else echo "tree matches the stamp's manifest ($(wc -l < "$KIT_SRC/manifest.sha256") files)"; fi
  else
    echo unknown
  fi
}
{
  echo "# libgsink GPU session: phase $phase$([ "$emulate" = 1 ] && echo ', EMULATED (no GPU)')"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
  echo "source: $(src_line | head -1)"
  src_line | sed -n '2p'
  echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || echo 'none (nvidia-smi not available)')"
  echo "nvcc: $(nvcc --version 2>/dev/null | grep -E 'release' || echo none)"
  echo "compute-sanitizer: $(compute-sanitizer --version 2>/dev/null | grep -iE 'version' | tail -1 || echo none)"
  echo "gcc: $(gcc -dumpfullversion 2>/dev/null); meson: $($MESON_CMD --version 2>/dev/null); ninja: $(${NINJA:-ninja} --version 2>/dev/null); pkg-config: $(command -v pkg-config || echo none)"
  echo "python (bench): ${PY:-none with torch} $([ -n "$PY" ] && "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null)"
  echo "build: $BUILD (-Dcuda=$cuda_opt -Dgpu_archs=${GSINK_GPU_ARCHS:-90}), kit: $(cd "$KIT_SRC" 2>/dev/null && ls *.deb 2>/dev/null | sed 's/_amd64.deb//' | paste -sd ' ')"
  echo
  cat "$STEPS"
  echo
  echo "total: $(( $(date +%s) - T0 ))s of the ${BUDGET}s budget; logs in $out"
} > "$SUMMARY"
rm -f "$STEPS"
# Cap what comes back (16 MiB a file): keep the head and the tail of a huge log.
for f in "$out"/*; do
  if [ -f "$f" ] && [ "$(stat -c %s "$f")" -gt $((15 * 1048576)) ]; then
    { head -c $((7 * 1048576)) "$f"; printf '\n[... cut by gpu-session.sh ...]\n'; tail -c $((7 * 1048576)) "$f"; } > "$f.cut" && mv "$f.cut" "$f"
  fi
done
echo
cat "$SUMMARY"
fail=0
for s in "${!STATUS[@]}"; do case ${STATUS[$s]} in FAIL|TIMEOUT) fail=1 ;; esac; done
exit $fail
