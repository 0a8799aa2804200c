#!/usr/bin/env bash
# The whole GPU session on your own GPU machine, in one command (docs/gpu.md explains each step):
#
#   bash scripts/gpu_session.sh [OUT_DIR]          # default OUT_DIR: out/gpu-session-<UTC date and time>
#   STEPS="check tests" bash scripts/gpu_session.sh out/gpu
#
# Steps (STEPS, run in this order; default "check tests bench plots"):
#   check  -- `cli.py check` per backend (CHECK_BACKENDS, default "numba cupy"), cells spread over the CPU
#             cores (-j 0): check_<backend>.json and .txt
#   tests  -- `python -m pytest -m gpu` (every GPU test; needs the [test] extra): pytest_gpu.txt; with
#             TESTS_JOBS > 1, split by file over that many processes (scripts/gpu_test_shards.py; shard
#             logs in tests/)
#   bench  -- the headline grid (ceilings measured first): bench.json, bench.csv, bench.md
#   goals  -- the extra grids of docs/kernels (softmax-d128, chunked-long, zeros-paper): <grid>.json and .md
#   plots  -- roofline (fwd+bwd and fwd) and scaling PNGs from bench.json
# Every step has a time limit and runs even if an earlier one failed.  OUT_DIR ends up holding every file
# above, session.log (everything printed) and summary.txt: each step's exit status, the check totals and
# the GPU tests' last line with every failure.  The script exits 1 if any step failed.
#
# Knobs (environment): PYTHON, CHECK_BACKENDS, CHECK_ARGS, CHECK_TIMEOUT (s), TESTS_ARGS, TESTS_TIMEOUT, TESTS_JOBS,
# BENCH_ARGS (filters for the headline grid, e.g. "--op softmax --dtype float16"), BENCH_BUDGET (s; default:
# the grid's own), BENCH_TIMEOUT, GOALS (grid names), GOALS_ARGS, GOALS_TIMEOUT; WHEELS and DEVICE_INFO as
# in scripts/device.sh, which this script runs first.
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT_DIR="${1:-$ROOT/out/gpu-session-$(date -u '+%Y%m%d-%H%M%S')}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
cd "$ROOT"
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
STEPS="${STEPS:-check tests bench plots}"
CHECK_BACKENDS="${CHECK_BACKENDS:-numba cupy}"
CHECK_ARGS="${CHECK_ARGS:-}"
CHECK_TIMEOUT="${CHECK_TIMEOUT:-1200}"
TESTS_ARGS="${TESTS_ARGS:-}"
TESTS_TIMEOUT="${TESTS_TIMEOUT:-1200}"
TESTS_JOBS="${TESTS_JOBS:-1}"
BENCH_ARGS="${BENCH_ARGS:-}"
BENCH_BUDGET="${BENCH_BUDGET:-}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-1800}"
GOALS="${GOALS:-zeros-paper softmax-d128 chunked-long}"
GOALS_ARGS="${GOALS_ARGS:-}"
GOALS_TIMEOUT="${GOALS_TIMEOUT:-1200}"
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"

step() {   # step NAME TIMEOUT_S LOG CMD...: run with a time limit (output to LOG, or "-": the console),
           # record the exit status, never abort the session
  local name="$1" limit="$2" log="$3"; shift 3
  local t0=$SECONDS
  echo "=== $name: $* (limit ${limit}s)"
  if [ "$log" = "-" ]; then
    timeout --kill-after=10 "$limit" "$@"
  else
    timeout --kill-after=10 "$limit" "$@" > "$log" 2>&1
  fi
  local rc=$?
  echo "=== $name: rc=$rc after $((SECONDS - t0))s"
  echo "$name: rc=$rc ($((SECONDS - t0)) s)" >> "$SUMMARY"
  return $rc
}

has() { [[ " $STEPS " == *" $1 "* ]]; }

session() {
  echo "gpu_session: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname); steps: $STEPS; results in $OUT_DIR"
  DEVICE_INFO="$OUT_DIR/gpu.txt" bash scripts/device.sh || echo "gpu_session: no usable GPU found (see above)"
  if [ -n "${WHEELS:-}" ]; then
    export PYTHONPATH="${TMPDIR:-/tmp}/workbench-site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  fi
  if has check; then
    for b in $CHECK_BACKENDS; do
      # shellcheck disable=SC2086
      step "check-$b" "$CHECK_TIMEOUT" "$OUT_DIR/check_$b.txt" "$PY" cli.py check --backend "$b" -j 0 $CHECK_ARGS \
           --json "$OUT_DIR/check_$b.json"
      tail -n 3 "$OUT_DIR/check_$b.txt"
      grep -E "FAIL|ERROR" "$OUT_DIR/check_$b.txt" | head -n 40
      { grep -E "^[0-9]+ passed, [0-9]+ failed" "$OUT_DIR/check_$b.txt" || tail -n 1 "$OUT_DIR/check_$b.txt"; } \
        | sed "s/^/  check-$b: /" >> "$SUMMARY"
    done
  fi
  if has tests; then
    if [ "$TESTS_JOBS" -gt 1 ]; then
      # shellcheck disable=SC2086
      step tests "$TESTS_TIMEOUT" "$OUT_DIR/pytest_gpu.txt" "$PY" scripts/gpu_test_shards.py --jobs "$TESTS_JOBS" \
           --timeout "$((TESTS_TIMEOUT - 30))" --out "$OUT_DIR/tests" ${TESTS_ARGS:+-- $TESTS_ARGS}
      { grep -E "^  (FAILED|ERROR) " "$OUT_DIR/pytest_gpu.txt"; tail -n 1 "$OUT_DIR/pytest_gpu.txt"; } \
        | sed "s/^/  pytest -m gpu: /" | tee -a "$SUMMARY"
    else
      # shellcheck disable=SC2086
      step tests "$TESTS_TIMEOUT" "$OUT_DIR/pytest_gpu.txt" "$PY" -m pytest -m gpu -q -rfE -p no:cacheprovider $TESTS_ARGS
      { grep -E "^(FAILED|ERROR) " "$OUT_DIR/pytest_gpu.txt"; tail -n 1 "$OUT_DIR/pytest_gpu.txt"; } \
        | sed "s/^/  pytest -m gpu: /" | tee -a "$SUMMARY"
    fi
  fi
  if has bench; then
    # shellcheck disable=SC2086
    step bench "$BENCH_TIMEOUT" - "$PY" cli.py bench --grid headline $BENCH_ARGS ${BENCH_BUDGET:+--budget "$BENCH_BUDGET"} \
         --remeasure --json "$OUT_DIR/bench.json" --csv "$OUT_DIR/bench.csv" --md "$OUT_DIR/bench.md" --short
  fi
  if has goals; then
    local t0=$SECONDS
    for g in $GOALS; do
      local left=$((GOALS_TIMEOUT - (SECONDS - t0)))
      [ "$left" -gt 20 ] || { echo "=== goals: no time left for $g"; echo "goals-$g: not run (time)" >> "$SUMMARY"; continue; }
      # shellcheck disable=SC2086
      step "goals-$g" "$left" - "$PY" cli.py bench --grid "$g" $GOALS_ARGS --json "$OUT_DIR/$g.json" \
           --md "$OUT_DIR/$g.md" --short
    done
  fi
  if has plots; then
    if [ -s "$OUT_DIR/bench.json" ]; then
      step roofline 120 - "$PY" cli.py roofline "$OUT_DIR/bench.json" --pass fwdbwd --out "$OUT_DIR/roofline.png"
      step roofline-fwd 120 - "$PY" cli.py roofline "$OUT_DIR/bench.json" --pass fwd --out "$OUT_DIR/roofline_fwd.png"
      step scaling 120 - "$PY" cli.py scaling --json "$OUT_DIR/bench.json" --pass fwdbwd --out "$OUT_DIR/scaling.png"
    else
      echo "=== plots: no bench.json in $OUT_DIR (run the bench step first)"
      echo "plots: not run (no bench.json)" >> "$SUMMARY"
    fi
  fi
  echo "=== summary ($SUMMARY):"
  cat "$SUMMARY"
  echo "=== files:"
  ls -la "$OUT_DIR"
}

session 2>&1 | tee "$OUT_DIR/session.log"
! grep -qE "rc=[1-9]|not run" "$SUMMARY"
