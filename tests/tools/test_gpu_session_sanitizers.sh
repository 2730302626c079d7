#!/usr/bin/env bash
# The sanitizer steps of tools/gpu-session.sh pass only on a clean summary.
# A fake compute-sanitizer (first on PATH) prints what a real one would, as
# told by the environment; the steps run as the session runs them
# (`gpu-session.sh __step memcheck|racecheck CTX`). Checks that:
#  - memcheck excludes the deliberate out_of_memory case from the main run
#    and runs it alone with API-error reporting off;
#  - a summary of "2 errors" fails the step even when the sanitizer's exit
#    code is 0 (the expected-failure case must not hide a real error);
#  - a failed or empty test run fails the step;
#  - racecheck runs the attention cases (one of them with the mma kernels:
#    GSINK_CUDA_ATTENTION=mma) and fails on any hazard.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/bin" "$tmp/build/tests/cuda"
: > "$tmp/build/tests/cuda/test_cuda_ops"
cat > "$tmp/bin/compute-sanitizer" <<'FAKE'
#!/usr/bin/env bash
if [ "${1:-}" = --version ]; then echo "Version fake"; exit 0; fi
opts=("${@:5}"); unset 'opts[-1]'  # less the test program
echo "call tool=$2 args=${opts[*]} run=${CK_RUN_CASE:-} exclude=${CK_EXCLUDE_TAGS:-} include=${CK_INCLUDE_TAGS:-}${GSINK_CUDA_ATTENTION:+ attention=$GSINK_CUDA_ATTENTION}" >> "$FAKE_CALLS"
case_name=${CK_RUN_CASE:-all}; [ -n "${CK_INCLUDE_TAGS:-}" ] && case_name=out_of_memory
[ -n "${GSINK_CUDA_ATTENTION:-}" ] && case_name=$case_name@$GSINK_CUDA_ATTENTION
if [ "$case_name" = "${FAKE_FAIL_CASE:-}" ]; then
  echo "95%: Checks: 20, Failures: 1, Errors: 0"
else
  echo "100%: Checks: ${FAKE_CHECKS:-20}, Failures: 0, Errors: 0"
fi
if [ "$2" = memcheck ]; then
  n=0; [ "$case_name" = "${FAKE_DIRTY_CASE:-none}" ] && n=2
  echo "========= ERROR SUMMARY: $n errors"
else
  n=0; [ "$case_name" = "${FAKE_DIRTY_CASE:-none}" ] && n=1
  echo "========= RACECHECK SUMMARY: $n hazards displayed ($n errors, 0 warnings)"
fi
exit 0
FAKE
chmod +x "$tmp/bin/compute-sanitizer"
cat > "$tmp/ctx" <<CTX
emulate=0
MODULE=$tmp/module.so
BUILD=$tmp/build
CTX
export FAKE_CALLS=$tmp/calls PATH=$tmp/bin:$PATH
unset GSINK_SAN_CASE GSINK_RACECHECK_CASES
fails=0
step() { # EXPECTED_RC STEP [VAR=VALUE ...]
  local want=$1 name=$2 rc=0; shift 2
  : > "$FAKE_CALLS"
  env "$@" bash "$root/tools/gpu-session.sh" __step "$name" "$tmp/ctx" > "$tmp/log" 2>&1 || rc=$?
  if { [ "$want" = 0 ] && [ "$rc" != 0 ]; } || { [ "$want" != 0 ] && [ "$rc" = 0 ]; }; then
    echo "FAIL: $name $* exited $rc, expected $([ "$want" = 0 ] && echo 0 || echo non-zero)"
    sed 's/^/  | /' "$tmp/log"; fails=$((fails + 1))
  else
    echo "ok: $name $* -> rc $rc"
  fi
}
expect_calls() { # PATTERN...: each a line of the fake's call log, in order
  local want got
  want=$(printf '%s\n' "$@")
  got=$(cat "$FAKE_CALLS")
  if [ "$want" != "$got" ]; then
    echo "FAIL: calls differ"; echo "  want: $want" | sed '2,$s/^/        /'; echo "  got:  $got" | sed '2,$s/^/        /'
    fails=$((fails + 1))
  fi
}

step 0 memcheck
expect_calls "call tool=memcheck args= run= exclude=deliberate_failure include=" \
             "call tool=memcheck args=--report-api-errors no run= exclude= include=deliberate_failure"
step 1 memcheck FAKE_DIRTY_CASE=all             # 2 errors in the main run, exit code 0
step 1 memcheck FAKE_DIRTY_CASE=out_of_memory   # 2 errors although API errors are off
step 1 memcheck FAKE_FAIL_CASE=all              # a failing test under the sanitizer
step 1 memcheck FAKE_CHECKS=0                   # no test ran
step 0 racecheck
expect_calls "call tool=racecheck args= run=attention exclude= include=" \
             "call tool=racecheck args= run=attention_tf32 exclude= include=" \
             "call tool=racecheck args= run=attention_bf16 exclude= include=" \
             "call tool=racecheck args= run=attention_bf16 exclude= include= attention=mma"
step 1 racecheck FAKE_DIRTY_CASE=attention_tf32
step 1 racecheck FAKE_FAIL_CASE=attention_bf16
step 1 racecheck FAKE_DIRTY_CASE=attention_bf16@mma
if ((fails)); then echo "$fails failure(s)"; exit 1; fi
echo "all sanitizer-step checks passed"
