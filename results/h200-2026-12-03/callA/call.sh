#!/usr/bin/env bash
# callA: the first call of the fourth session of 2026-12-03, on the merged tree of the third (afce73c + the shard
# balancing): #10's measures first with the GPU alone (API overhead grid, softmax T = 1024, Numba's warm first call),
# then every GPU test (shards balanced on callJ's times) beside check of the CuPy linear and ZeroS variants
set -x
P=python3
W=/tmp/a; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/a.tgz -C /tmp a; }
( while true; do sleep 15; tar czf $OUT/a.tmp.tgz -C /tmp a 2>/dev/null && mv $OUT/a.tmp.tgz $OUT/a.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
( time timeout 130 $P cli.py warmup --backend cupy -j 15 ) > $W/warm.txt 2>&1
el warm done
timeout 60 $P cli.py bench --grid api --backend cupy:fa2 --backend cupy:fa2_3xtf32 --backend cupy:chunked_mma --backend cupy:chunked_mma_fused3 --budget 45 --json $W/api1.json --md $W/api1.md > $W/api1.txt 2>&1
el api done
timeout 30 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 20 --json $W/sm1024.json --md $W/sm1024.md > $W/sm1024.txt 2>&1
el sm1024 done
mkdir -p $W/fc
timeout 50 $P scripts/first_call.py --op linear --backend numba --timeout 45 --json $W/fc/numba-linear.json > $W/fc/numba-linear.txt 2>&1
el first call done
PIDS=""
timeout $(left 560) $P scripts/gpu_test_shards.py --jobs 8 --timeout $(left 550) --times results/h200-2026-12-03/callJ/tests --out $W/tests -- --durations=40 > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
( for op_t in linear:400 zeros:545; do op=${op_t%:*}; t=${op_t#*:}
    $P cli.py check --op $op --backend cupy -j 2 --time-limit $(left $t) --json $W/check_$op.json > $W/check_$op.txt 2> $W/check_${op}_progress.txt
    el check $op done
  done ) &
PIDS="$PIDS $!"
wait $PIDS
el tests and checks done
kill $TARPID
el all done
