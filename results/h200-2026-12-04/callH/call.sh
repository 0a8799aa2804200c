#!/usr/bin/env bash
# callH (prepared 2026-12-04 for the next session, on branch wip-decayed-wgmma): the wgmma walkers with log decays --
# GPU tests of every wg mode (the branch changed the linear instantiations' code generation too) beside fla's compiles;
# then the splits of decayed float16 64k / 16k (chunked_mma_wgb against chunked_mma_dqr) and linear (wgb, to see the
# linear path unchanged), fwd+bwd against fla-gla-gamma and fla-linear, the check of decayed chunked_mma_wgb.
set -x
P=python3
W=/tmp/c; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/c.tgz -C /tmp c; }
( while true; do sleep 12; tar czf $OUT/c.tmp.tgz -C /tmp c 2>/dev/null && mv $OUT/c.tmp.tgz $OUT/c.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
FPIDS=""
for op in linear decayed; do
  FLA_CACHE_RESULTS=1 timeout 200 $P cli.py bench --grid headline --op $op --backend peer --dtype float16 --T 1024 --budget 5 > $W/flac-$op.txt 2>&1 &
  FPIDS="$FPIDS $!"
done
( time timeout 150 $P cli.py warmup --op linear --op decayed --backend cupy -j 8 ) > $W/warm.txt 2>&1 &
FPIDS="$FPIDS $!"
timeout 60 $P -m pytest -q -m gpu tests/test_wgmma.py -p no:cacheprovider > $W/test_wgmma.txt 2>&1
timeout 200 $P scripts/gpu_test_shards.py --jobs 6 --piece 50 --timeout 190 --out $W/tests -- -k "not numba and (wg_ or beyond or launches)" \
   tests/test_cupy_chunked_mma.py > $W/tests.txt 2>&1
el tests done
wait $FPIDS
for c in "decayed float16 65536" "decayed float16 16384" "linear float16 65536"; do set -- $c
  timeout 40 $P cli.py kernels --op $1 --backend cupy:chunked_mma_wgb --backend cupy:chunked_mma_dqr --dtype $2 --T $3 --json $W/kernels_$1_$2_$3.json > $W/kernels_$1_$2_$3.txt 2>&1
done
el kernels done
export FLA_CACHE_RESULTS=1
timeout $(left 420) $P cli.py bench --grid headline --op decayed --op linear --dtype float16 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_wgb --backend cupy:chunked_mma_dqr --backend peer --pass fwdbwd --budget 40 --json $W/bench_fla.json --md $W/bench_fla.md > $W/bench_fla.txt 2>&1
el bench done
( $P cli.py check --op decayed --backend cupy:chunked_mma_wgb --dtype float16 -j 3 --time-limit $(left 540) --json $W/check.json > $W/check.txt 2> $W/check_progress.txt; el check done )
kill $TARPID
el all done
