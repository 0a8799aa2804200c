#!/usr/bin/env bash
# callK (2026-12-04): fa2_bwd_one with its key blocks re-pipelined (two buffers of Q, dO, o, lse; D_t from the tiles
# in shared memory) -- callJ measured the first form 3-5x slower than the atomic backward.  Softmax GPU tests,
# fa2_one against fa2_atomic at T 1k-16k, softmax float16 T = 1024 through the API, the check.  Beside it: tg_bwd_dq
# with log decays forming its weighed fragments while the first batch runs (its GPU tests, the decayed 64k split).
set -x
P=python3
W=/tmp/c; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/c.tgz -C /tmp c; }
( while true; do sleep 12; tar czf $OUT/c.tmp.tgz -C /tmp c 2>/dev/null && mv $OUT/c.tmp.tgz $OUT/c.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
( time timeout 60 $P cli.py warmup --op softmax --backend cupy -j 8 ) > $W/warm.txt 2>&1
el warmup done
timeout 60 $P cli.py bench --grid headline --op softmax --dtype float16 --T 1024 --T 2048 --T 4096 --T 16384 \
   --backend cupy:fa2_one --backend cupy:fa2_atomic --no-peers --pass fwdbwd --pass bwd --budget 20 --json $W/bench_one.json --md $W/bench_one.md > $W/bench_one.txt 2>&1
el bench one done
timeout 30 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 10 --json $W/sm1024.json --md $W/sm1024.md > $W/sm1024.txt 2>&1
timeout 30 $P _dev/fa2_set.py 4096 -- bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 10 --json $W/sm1024_one.json --md $W/sm1024_one.md > $W/sm1024_one.txt 2>&1
el sm1024 done
timeout $(left 250) $P scripts/gpu_test_shards.py --jobs 8 --piece 30 --timeout 100 --out $W/tests -- \
   -k "not numba and (softmax or (wgb and decayed) or launches)" tests/test_cupy_softmax.py tests/test_cupy_chunked_mma.py > $W/tests.txt 2>&1
el tests done
timeout $(left 285) $P cli.py kernels --op decayed --backend cupy:chunked_mma_wgb --dtype float16 --T 65536 --json $W/kernels_decayed.json > $W/kernels_decayed.txt 2>&1
el kernels done
kill $TARPID
el all done
