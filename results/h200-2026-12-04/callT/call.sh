#!/usr/bin/env bash
# callT (2026-12-04, fourth session; tree 84c6184): the fa2 forward and tail backward launched on addresses -- the
# softmax GPU tests and check of cupy:fa2, then #10's goals on one host: every op's default through the API at T = 64
# (bench --grid api on the default variants, two processes) and softmax float16 T = 1024 (three processes).
set -x
P=python3
W=/tmp/c; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/c.tgz -C /tmp c; }
( while true; do sleep 12; tar czf $OUT/c.tmp.tgz -C /tmp c 2>/dev/null && mv $OUT/c.tmp.tgz $OUT/c.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
( time timeout 200 $P cli.py warmup --backend cupy -j 14 ) > $W/warm.txt 2>&1
el warmup done
timeout 150 $P scripts/gpu_test_shards.py --jobs 4 --piece 40 --timeout 140 --out $W/tests_sm -- -k "not numba and (fa2 or api or launches)" \
   tests/test_cupy_softmax.py tests/test_gpu_api.py > $W/tests_sm.txt 2>&1
el softmax tests done
( $P cli.py check --op softmax --backend cupy:fa2 --dtype float16 --dtype bfloat16 -j 3 --time-limit 60 --json $W/check_sm.json > $W/check_sm.txt 2> $W/check_sm_progress.txt; el check softmax done )
DEF="--backend cupy:fa2 --backend cupy:fa2_3xtf32 --backend cupy:chunked_mma_wgb --backend cupy:chunked_mma_dqr --backend cupy:chunked_mma_wgk --backend cupy:chunked_mma_fused3"
for r in 1 2; do
  timeout 70 $P cli.py bench --grid api $DEF --budget 50 --json $W/api$r.json --md $W/api$r.md > $W/api$r.txt 2>&1
done
el api done
for r in 1 2 3; do
  timeout 30 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 12 --json $W/sm1024_$r.json --md $W/sm1024_$r.md > $W/sm1024_$r.txt 2>&1
done
el sm1024 done
kill $TARPID
el all done
