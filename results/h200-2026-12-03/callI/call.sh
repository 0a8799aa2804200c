#!/usr/bin/env bash
# callI: the last call of the session: API overhead with the new ZeroS default (fused3) beside the host floor,
# softmax T = 1024 through the API, Numba first call (quiet, one op at a time); then the GPU tests of the changes since
# callG, the diagnosis of callH's bfloat16 anchored failures, check of cupy:chunked_mma_dqa (float16, float32)
set -x
P=python3
W=/tmp/i; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/i.tgz -C /tmp i; }
( while true; do sleep 15; tar czf $OUT/i.tmp.tgz -C /tmp i 2>/dev/null && mv $OUT/i.tmp.tgz $OUT/i.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
( time timeout 120 $P cli.py warmup --backend cupy -j 15 ) > $W/warm.txt 2>&1
el warm done
timeout 45 $P cli.py bench --grid api --backend cupy:fa2 --backend cupy:fa2_3xtf32 --backend cupy:chunked_mma --backend cupy:chunked_mma_fused3 --budget 40 --json $W/api1.json --md $W/api1.md > $W/api1.txt 2>&1
el api done
for r in 1 2; do
  timeout 30 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 20 --json $W/sm1024_$r.json --md $W/sm1024_$r.md > $W/sm1024_$r.txt 2>&1
done
el sm1024 done
mkdir -p $W/fc
for op in softmax linear decayed zeros; do
  timeout 40 $P scripts/first_call.py --op $op --backend numba --timeout 35 --json $W/fc/numba-$op.json > $W/fc/numba-$op.txt 2>&1
done
el first calls done
PIDS=""
timeout $(left 400) $P scripts/gpu_test_shards.py --jobs 8 --timeout $(left 395) --out $W/tests -- --durations=30 -k "(zeros or bfloat16_decayed or host_path or fast_launch or api or bench) and not numba" > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
timeout $(left 390) $P _dev/diag_bf16.py $W/diag_bf16.json > $W/diag_bf16.txt 2>&1 &
PIDS="$PIDS $!"
$P cli.py check --op decayed --backend cupy:chunked_mma_dqa --dtype float16 --dtype float32 -j 2 --time-limit $(left 380) --json $W/check_dqa.json > $W/check_dqa.txt 2> $W/check_dqa_progress.txt &
PIDS="$PIDS $!"
wait $PIDS
el tests and checks done
kill $TARPID
el all done
