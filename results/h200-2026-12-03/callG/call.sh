#!/usr/bin/env bash
# callG (second session of 2026-12-03): issue #10's last measures on 58f8c54: the public API's host overhead of every
# op's default, float16 and float32, four rounds on a quiet host (nothing else running), softmax float16 T = 1024
# through the API against its kernels (two rounds); then, in parallel: Numba first call after `cli.py warmup` into an
# empty cache per op, and the GPU tests of the ZeroS/host-path code 58f8c54 touched
set -x
P=python3
W=/tmp/g; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/g.tgz -C /tmp g; }
( while true; do sleep 15; tar czf $OUT/g.tmp.tgz -C /tmp g 2>/dev/null && mv $OUT/g.tmp.tgz $OUT/g.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
( time timeout 100 $P cli.py warmup --backend cupy --op softmax --op linear --op decayed --op zeros -j 14 ) > $W/warm.txt 2>&1
el warm done
for r in 1 2 3 4; do
  timeout 60 $P cli.py bench --grid api --backend cupy:fa2 --backend cupy:fa2_3xtf32 --backend cupy:chunked_mma --backend cupy:chunked_mma_fused2 --budget 50 --json $W/api$r.json --md $W/api$r.md > $W/api$r.txt 2>&1
  el api round $r
done
for r in 1 2; do
  timeout 40 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 30 --json $W/sm1024_$r.json --md $W/sm1024_$r.md > $W/sm1024_$r.txt 2>&1
done
el sm1024 done
mkdir -p $W/fc
FPIDS=""
for op in softmax linear decayed zeros; do
  timeout $(left 400) $P scripts/first_call.py --op $op --backend numba --after-warmup --timeout 230 --json $W/fc/numba-$op.json > $W/fc/numba-$op.txt 2>&1 &
  FPIDS="$FPIDS $!"
done
timeout $(left 390) $P scripts/gpu_test_shards.py --jobs 6 --timeout $(left 385) --out $W/tests -- --durations=30 -k "(zeros or host_path or fast_launch or api) and not numba" > $W/tests.txt 2>&1
el tests done
wait $FPIDS
el first calls done
kill $TARPID
el all done
