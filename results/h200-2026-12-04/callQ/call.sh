#!/usr/bin/env bash
# callQ (2026-12-04, fourth session): the softmax host path (the prepared pair softmax.Fa2Run; fa2_bwd_pre queued
# before the gradients are allocated; the scratch from cupy.cuda.alloc) -- its GPU tests with the API tests, check of
# cupy:fa2, an A/B of the orders in one process, the goal's measure (softmax float16 T = 1024 through the API, three
# processes), the API grid for softmax at T = 64; beside it fla's autotuning, then decayed and linear float16 at 16k /
# 64k against fla in the same run (the defaults).
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
  FLA_CACHE_RESULTS=1 timeout 220 $P cli.py bench --grid headline --op $op --backend peer --dtype float16 --T 1024 --budget 5 > $W/flac-$op.txt 2>&1 &
  FPIDS="$FPIDS $!"
done
( time timeout 200 $P cli.py warmup --op linear --op decayed --backend cupy -j 6 ) > $W/warm_lin.txt 2>&1 &
FPIDS="$FPIDS $!"
( time timeout 60 $P cli.py warmup --op softmax --backend cupy -j 6 ) > $W/warm_sm.txt 2>&1
el warmup softmax done
timeout 150 $P scripts/gpu_test_shards.py --jobs 4 --piece 30 --timeout 140 --out $W/tests_sm -- -k "not numba and (fa2 or api or launches)" \
   tests/test_cupy_softmax.py tests/test_gpu_api.py > $W/tests_sm.txt 2>&1
el softmax tests done
( $P cli.py check --op softmax --backend cupy:fa2 --dtype float16 --dtype bfloat16 -j 3 --time-limit 70 --json $W/check_sm.json > $W/check_sm.txt 2> $W/check_sm_progress.txt; el check softmax done )
wait $FPIDS
el fla and warmup done
timeout 100 $P _dev/order_ab.py 1024 10 > $W/order_ab_1024.json 2> $W/order_ab_1024.err
el ab done
for r in 1 2 3; do
  timeout 40 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 15 --json $W/sm1024_$r.json --md $W/sm1024_$r.md > $W/sm1024_$r.txt 2>&1
done
el sm1024 done
timeout 45 $P cli.py bench --grid api --op softmax --backend cupy:fa2 --budget 30 --json $W/api_sm.json --md $W/api_sm.md > $W/api_sm.txt 2>&1
el api done
export FLA_CACHE_RESULTS=1
timeout $(left 520) $P cli.py bench --grid headline --op decayed --op linear --dtype float16 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_wgk --backend cupy:chunked_mma_wgb --backend peer --pass fwdbwd --budget 40 --json $W/bench_fla.json --md $W/bench_fla.md > $W/bench_fla.txt 2>&1
el bench done
kill $TARPID
el all done
