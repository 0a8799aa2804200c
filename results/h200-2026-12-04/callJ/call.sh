#!/usr/bin/env bash
# callJ (2026-12-04): the one-launch fa2 backward (fa2_bwd_one; cupy:fa2 up to FA2_ONE_LAUNCH_MAX_T, cupy:fa2_one,
# cupy:fa2_atomic) -- softmax GPU tests, fwd+bwd fa2_one against fa2_atomic at T 1k-16k (the threshold), softmax
# float16 T = 1024 through the API (issue #10), the check of the fa2 variants; decayed float16 64k against fla.
set -x
P=python3
W=/tmp/c; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/c.tgz -C /tmp c; }
( while true; do sleep 12; tar czf $OUT/c.tmp.tgz -C /tmp c 2>/dev/null && mv $OUT/c.tmp.tgz $OUT/c.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
FLA_CACHE_RESULTS=1 timeout 200 $P cli.py bench --grid headline --op decayed --backend peer --dtype float16 --T 1024 --budget 5 > $W/flac-decayed.txt 2>&1 &
FPID=$!
( time timeout 100 $P cli.py warmup --op softmax --backend cupy -j 8 ) > $W/warm.txt 2>&1
el warmup done
timeout 200 $P scripts/gpu_test_shards.py --jobs 8 --piece 40 --timeout 190 --out $W/tests -- -k "not numba" \
   tests/test_cupy_softmax.py tests/test_gpu_api.py > $W/tests.txt 2>&1
el tests done
wait $FPID
timeout 40 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 15 --json $W/sm1024.json --md $W/sm1024.md > $W/sm1024.txt 2>&1
timeout 150 $P cli.py bench --grid headline --op softmax --dtype float16 --T 1024 --T 2048 --T 4096 --T 16384 \
   --backend cupy:fa2_one --backend cupy:fa2_atomic --no-peers --pass fwdbwd --pass bwd --budget 40 --json $W/bench_one.json --md $W/bench_one.md > $W/bench_one.txt 2>&1
el bench one done
export FLA_CACHE_RESULTS=1
timeout 100 $P cli.py bench --grid headline --op decayed --dtype float16 --T 65536 \
   --backend cupy:chunked_mma_wgk --backend cupy:chunked_mma_dqr --backend peer --pass fwdbwd --budget 20 --json $W/bench_fla.json --md $W/bench_fla.md > $W/bench_fla.txt 2>&1
el bench fla done
timeout 40 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 15 --json $W/sm1024b.json --md $W/sm1024b.md > $W/sm1024b.txt 2>&1
( $P cli.py check --op softmax --backend cupy:fa2_one --backend cupy:fa2 --dtype float16 --dtype bfloat16 -j 3 --time-limit $(left 530) --json $W/check.json > $W/check.txt 2> $W/check_progress.txt; el check done )
kill $TARPID
el all done
