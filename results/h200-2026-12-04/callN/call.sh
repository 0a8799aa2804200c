#!/usr/bin/env bash
# callN (2026-12-04, third session): fa2_bwd_tail with the batched cast (fa_dq_cast_rows: 8 float4 loads in flight,
# runs of tiles) -- bench against fa2_atomic at T 1k-16k, the API at T = 1024 alternating the default's atomic and
# tail forms three times, the tail's GPU tests, check of fa2_tail.
set -x
P=python3
W=/tmp/c; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/c.tgz -C /tmp c; }
( while true; do sleep 12; tar czf $OUT/c.tmp.tgz -C /tmp c 2>/dev/null && mv $OUT/c.tmp.tgz $OUT/c.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
( time timeout 60 $P cli.py warmup --op softmax --backend cupy -j 8 ) > $W/warm_sm.txt 2>&1
el warmup softmax done
timeout 70 $P cli.py bench --grid headline --op softmax --dtype float16 --T 1024 --T 2048 --T 4096 --T 16384 \
   --backend cupy:fa2_tail --backend cupy:fa2_atomic --no-peers --pass fwdbwd --pass bwd --budget 25 --json $W/bench_tail.json --md $W/bench_tail.md > $W/bench_tail.txt 2>&1
el bench done
for r in 1 2 3; do
  timeout 40 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 15 --json $W/sm1024_atomic$r.json --md $W/sm1024_atomic$r.md > $W/sm1024_atomic$r.txt 2>&1
  timeout 40 $P _dev/fa2_set.py FA2_TAIL_MAX_T=4096 -- bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 15 --json $W/sm1024_tail$r.json --md $W/sm1024_tail$r.md > $W/sm1024_tail$r.txt 2>&1
done
el sm1024 done
timeout 150 $P scripts/gpu_test_shards.py --jobs 6 --piece 30 --timeout 140 --out $W/tests_sm -- -k "not numba and (tail or launches or atomic)" \
   tests/test_cupy_softmax.py > $W/tests_sm.txt 2>&1
el softmax tests done
( $P cli.py check --op softmax --backend cupy:fa2_tail --dtype float16 --dtype bfloat16 -j 3 --time-limit $(left 400) --json $W/check_sm.json > $W/check_sm.txt 2> $W/check_sm_progress.txt; el check softmax done )
kill $TARPID
el all done
