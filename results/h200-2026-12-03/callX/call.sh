#!/usr/bin/env bash
# callX: dqfold (cupy:chunked_mma_dqf) and zshost (ZeroS fused forward plan, cached output layouts) merged on main:
# every GPU test beside the dqf checks and the fused ZeroS checks; then dqf against chunked_mma, the host profile,
# CuPy's allocation costs and the API overhead of the default variants
set -x
P=python3
W=/tmp/x; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/x.tgz -C /tmp x; }
( while true; do sleep 15; tar czf $OUT/x.tmp.tgz -C /tmp x 2>/dev/null && mv $OUT/x.tmp.tgz $OUT/x.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
( time timeout 100 $P cli.py warmup --backend cupy -j 16 ) > $W/warm.txt 2>&1
el warm done
PIDS=""
timeout $(left 320) $P scripts/gpu_test_shards.py --jobs 8 --timeout $(left 315) --out $W/tests -- --durations=30 -k "not numba" > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
$P cli.py check --op linear --op decayed --backend cupy:chunked_mma_dqf -j 4 --time-limit $(left 295) --json $W/check_dqf.json > $W/check_dqf.txt 2> $W/check_dqf_progress.txt &
PIDS="$PIDS $!"
$P cli.py check --op zeros --backend cupy:chunked_mma_fused -j 2 --time-limit $(left 295) --json $W/check_zeros_fused.json > $W/check_zeros_fused.txt 2> $W/check_zeros_fused_progress.txt &
PIDS="$PIDS $!"
wait $PIDS
el tests and checks done
timeout 90 $P cli.py bench --op linear --op decayed --backend cupy:chunked_mma --backend cupy:chunked_mma_dqf --dtype float16 --dtype bfloat16 --dtype float32 --T 4096 --T 16384 --T 65536 --D 64 --pass fwdbwd --no-peers --budget 70 --json $W/bench_dqf.json --md $W/bench_dqf.md > $W/bench_dqf.txt 2>&1
el bench dqf done
timeout 40 $P scripts/host_profile.py --op zeros --op decayed --op linear --op softmax --dtype float16 --calls 600 --out $W/hp > $W/host_profile.txt 2>&1
el host profile done
timeout 20 $P scripts/cupy_alloc_cost.py > $W/alloc_cost.txt 2>&1
timeout 45 $P cli.py bench --grid api --dtype float16 --backend cupy:fa2 --backend cupy:chunked_mma --backend cupy:chunked_mma_fused --budget 30 --json $W/api.json --md $W/api.md > $W/api.txt 2>&1
el api done
kill $TARPID
el all done
