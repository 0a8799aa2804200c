#!/usr/bin/env bash
# team device call (not committed): runs the steps named in STEPS with per-step limits, collects everything in
# $OUT/w and packs it into $OUT/call.tgz.  Steps: warm tests checkc checkn tune benchtc api first sweep
set -u
cd "$(dirname "$0")/.."
W=$OUT/w; mkdir -p $W
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
STEPS="${STEPS:-warm tests checkc}"
t0=$SECONDS
step() { local name=$1 lim=$2; shift 2; local s=$SECONDS; timeout --kill-after=5 $lim "$@" > $W/$name.txt 2>&1; local rc=$?;
         echo "=== $name rc=$rc $((SECONDS-s))s (total $((SECONDS-t0))s)"; tail -n ${TAILN:-4} $W/$name.txt; }
has() { [[ " $STEPS " == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt 2>&1
has compile && step compile ${COMPILE_T:-45} python3 scripts/_compile_groups.py
has tcup    && { step tcup ${TCUP_T:-90} python3 -m pytest -m gpu -q -p no:cacheprovider --tb=line -rfE tests/test_cupy_chunked_mma.py tests/test_cupy_softmax.py tests/test_cupy_zeros_mma.py tests/test_cupy_chunked.py tests/test_gpu_state.py tests/test_gpu_api.py; grep -E "^(FAILED|ERROR)" $W/tcup.txt | head -30; }
has tnum    && { step tnum ${TNUM_T:-60} python3 -m pytest -m gpu -q -p no:cacheprovider --tb=line -rfE tests/test_numba_softmax.py tests/test_numba_linear.py tests/test_numba_decayed.py tests/test_numba_zeros.py tests/test_numba_jit.py; grep -E "^(FAILED|ERROR)" $W/tnum.txt | head -30; }
has peersm  && TAILN=30 step peersm ${PEERSM_T:-60} python3 cli.py bench --grid headline --op softmax --dtype float16 --T 4096 --T 16384 --backend cupy:fa2 --backend cupy:flash_mma --backend peer --pass fwdbwd --json $W/bench_softmax.json --md $W/bench_softmax.md --short
has peerlin && TAILN=30 step peerlin ${PEERLIN_T:-120} python3 cli.py bench --grid headline --op linear --dtype float16 --T 16384 --T 65536 --backend cupy:chunked_mma --backend peer --pass fwdbwd --json $W/bench_linear.json --md $W/bench_linear.md --short
has warm    && step warm ${WARM_T:-120} python3 cli.py warmup --backend cupy -j 16
has tests   && { step tests ${TESTS_T:-200} python3 -m pytest -m gpu -q -p no:cacheprovider --tb=line -rfE ${TESTS_ARGS:-}; grep -E "^(FAILED|ERROR)" $W/tests.txt | head -40; }
has checkc  && { step checkc ${CHECKC_T:-170} python3 cli.py check --backend cupy -j 0 ${CHECKC_ARGS:-} --json $W/check_cupy.json; grep -E "FAIL|ERROR" $W/checkc.txt | head -30; }
has checkn  && { step checkn ${CHECKN_T:-170} python3 cli.py check --backend numba -j 0 ${CHECKN_ARGS:-} --json $W/check_numba.json; grep -E "FAIL|ERROR" $W/checkn.txt | head -30; }
has tune    && step tune ${TUNE_T:-60} python3 scripts/tune_chunked_mma.py --dtype float16 --T 4096 --T 16384 --T 65536 --reps 10 --json $W/tune.json
has benchtc && TAILN=40 step benchtc ${BENCHTC_T:-120} python3 cli.py bench --grid headline ${BENCHTC_ARGS:-} --no-peers --json $W/bench_tc.json --short
has api     && TAILN=40 step api ${API_T:-150} python3 cli.py bench --grid api ${API_ARGS:-} --json $W/api.json --md $W/api.md --short
has first   && TAILN=20 step first ${FIRST_T:-120} python3 scripts/first_call.py --backend cupy --after-warmup --json $W/first_call.json
has sweep   && TAILN=10 step sweep ${SWEEP_T:-120} python3 scripts/shape_sweep.py --backend numba
has peers   && TAILN=60 step peers ${PEERS_T:-300} python3 cli.py bench --grid headline ${PEERS_ARGS:-} --json $W/bench_peers.json --md $W/bench_peers.md --short
tar czf $OUT/call.tgz -C $W .
echo "done $((SECONDS-t0))s"
