#!/usr/bin/env bash
# The GPU session in one device call:
#   run(command="bash scripts/device.sh bash scripts/gpu_session.sh", carry=[".whl"])
#   run(command="STEPS='bench goals plots' bash scripts/device.sh bash scripts/gpu_session.sh", carry=[".whl"])
# Steps (STEPS, in this order; default "check bench plots"):
#   check  -- `cli.py check` per backend (numba, cupy), cells spread over the CPU cores (-j 0): JSON + table
#   bench  -- the headline grid (ceilings measured first): JSON, CSV, Markdown
#   goals  -- the issues' goal cells the headline grid lacks (grids softmax-d128, chunked-long, zeros-paper)
#   plots  -- roofline (forward and fwd+bwd) and scaling PNGs from the headline JSON
# Every step has a hard time limit and runs even if an earlier one failed.  The default (check, a budgeted
# headline bench, plots) fits the device tool's 600 s per call: about 155 s numba check + 85 s cupy check
# (16 processes) + 180 s bench + plots.  The full bench does not fit one call: fla's Triton autotuning
# compiles for 100-200 s per kernel family and dtype in every fresh process.  The H100 session of
# 2026-11-23 (results/h100-2026-11-23) therefore ran as these calls, merged afterwards with
# `cli.py bench --from-json A --from-json B ... --json merged.json`:
#   STEPS="check"
#   STEPS="bench goals plots" BENCH_ARGS="--op softmax --op zeros" GOALS="zeros-paper softmax-d128"
#   STEPS="bench" BENCH_ARGS="--op linear --op decayed --dtype float16 --T 1024 --T 2048 --T 4096 --T 16384 --T 65536"
#   STEPS="bench" BENCH_ARGS="--op linear --op decayed --dtype float32 --T 1024 --T 2048 --T 4096 --T 16384 --T 65536"
# (each with BENCH_BUDGET/BENCH_TIMEOUT raised to about 450/540).
# Everything lands in $OUT/work/ and is packed into $OUT/results.tgz (the device tool returns at most 8
# files); session.log, bench.md and the PNGs are also copied to $OUT itself for a quick look; with bench
# or goals, Triton's cache comes back as triton_cache.tgz when it is under 15 MB (unpack it into
# .triton_cache/ and carry it to skip the recompiles; it was larger every time on 2026-11-23).
set -u
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/out}"
WORK="$OUT/work"
mkdir -p "$WORK"
export MPLBACKEND=Agg PYTHONUNBUFFERED=1
# Triton's cache (compiled kernels and, with fla's cache_results, autotuning results) survives between calls
# when it comes back as triton_cache.tgz and is unpacked into .triton_cache/ here and carried.
export TRITON_CACHE_DIR="${TRITON_CACHE_DIR:-$PWD/.triton_cache}"
mkdir -p "$TRITON_CACHE_DIR"
PY="${PYTHON:-python3}"
STEPS="${STEPS:-check bench plots}"
CHECK_BACKENDS="${CHECK_BACKENDS:-numba cupy}"
CHECK_TIMEOUT="${CHECK_TIMEOUT:-170}"
CHECK_ARGS="${CHECK_ARGS:-}"
BENCH_BUDGET="${BENCH_BUDGET:-140}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-180}"
GOALS_TIMEOUT="${GOALS_TIMEOUT:-150}"
BENCH_ARGS="${BENCH_ARGS:-}"            # filters for the headline grid, e.g. "--op softmax --op zeros"
GOALS="${GOALS:-zeros-paper softmax-d128 chunked-long}"
GOALS_ARGS="${GOALS_ARGS:-}"            # filters for the goal grids, e.g. "--dtype float16"

step() {   # step NAME TIMEOUT_S CMD...: run with a hard time limit, report the status, never abort the session
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  echo "=== $name: $* (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  echo "=== $name: rc=$rc after $((SECONDS - t0))s"
}

has() { [[ " $STEPS " == *" $1 "* ]]; }

session() {
  echo "gpu_session: $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname); steps: $STEPS"
  if has check; then
    for b in $CHECK_BACKENDS; do
      # shellcheck disable=SC2086
      step "check-$b" "$CHECK_TIMEOUT" "$PY" cli.py check --backend "$b" -j 0 $CHECK_ARGS \
           --json "$WORK/check_$b.json" > "$WORK/check_$b.txt" 2>&1
      tail -n 3 "$WORK/check_$b.txt"
      grep -E "FAIL|ERROR" "$WORK/check_$b.txt" | head -n 40
    done
  fi
  if has bench; then
    # shellcheck disable=SC2086
    step bench "$BENCH_TIMEOUT" "$PY" cli.py bench --grid headline $BENCH_ARGS --budget "$BENCH_BUDGET" --remeasure \
         --json "$WORK/bench.json" --csv "$WORK/bench.csv" --md "$WORK/bench.md" --short
  fi
  if has goals; then
    local t0=$SECONDS
    for g in $GOALS; do
      local left=$((GOALS_TIMEOUT - (SECONDS - t0)))
      [ "$left" -gt 20 ] || { echo "=== goals: no time left for $g"; continue; }
      # shellcheck disable=SC2086
      step "goals-$g" "$left" "$PY" cli.py bench --grid "$g" $GOALS_ARGS --json "$WORK/$g.json" --md "$WORK/$g.md" --short
    done
  fi
  if has plots && [ -s "$WORK/bench.json" ]; then
    step roofline 60 "$PY" cli.py roofline "$WORK/bench.json" --pass fwdbwd --out "$WORK/roofline.png"
    step roofline-fwd 60 "$PY" cli.py roofline "$WORK/bench.json" --pass fwd --out "$WORK/roofline_fwd.png"
    step scaling 60 "$PY" cli.py scaling --json "$WORK/bench.json" --pass fwdbwd --out "$WORK/scaling.png"
  fi
  echo "=== files:"
  ls -la "$WORK"
}

session 2>&1 | tee "$WORK/session.log"
for f in session.log bench.md roofline.png scaling.png; do
  [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/$f"
done
tar czf "$OUT/results.tgz" -C "$WORK" .
rm -rf "$WORK"
if has bench || has goals; then
  tar czf "$OUT/triton_cache.tgz" -C "$TRITON_CACHE_DIR" .
  [ "$(stat -c %s "$OUT/triton_cache.tgz")" -lt 15000000 ] || { echo "triton cache too large to return"; rm "$OUT/triton_cache.tgz"; }
fi
