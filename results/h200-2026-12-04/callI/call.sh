#!/usr/bin/env bash
# callI (2026-12-04): cupy:chunked_mma_wgk (the dk/dv walker alone on wgmma; decayed float16's new default) -- its GPU
# tests, tests/test_gpu_api.py after a warm-up (small shard pieces), the decayed float16 split wgk / wgb, fwd+bwd at
# T 1k-64k against fla-gla-gamma, softmax float16 T = 1024 through the API, the check of decayed wgk.
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
( time timeout 150 $P cli.py warmup -j 8 ) > $W/warm.txt 2>&1
el warmup done
timeout 150 $P scripts/gpu_test_shards.py --jobs 6 --piece 50 --timeout 140 --out $W/tests -- -k "not numba and (wgk or launches)" \
   tests/test_cupy_chunked_mma.py > $W/tests.txt 2>&1
el wgk tests done
timeout 200 $P scripts/gpu_test_shards.py --jobs 8 --piece 6 --timeout 190 --out $W/tests_api -- -k "not numba" tests/test_gpu_api.py > $W/tests_api.txt 2>&1
el api tests done
wait $FPID
timeout 40 $P cli.py kernels --op decayed --backend cupy:chunked_mma_wgk --backend cupy:chunked_mma_wgb --dtype float16 --T 65536 --json $W/kernels_decayed.json > $W/kernels_decayed.txt 2>&1
timeout 40 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 15 --json $W/sm1024.json --md $W/sm1024.md > $W/sm1024.txt 2>&1
el kernels done
export FLA_CACHE_RESULTS=1
timeout $(left 450) $P cli.py bench --grid headline --op decayed --dtype float16 --T 1024 --T 2048 --T 4096 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_wgk --backend cupy:chunked_mma_dqr --backend peer --pass fwdbwd --budget 30 --json $W/bench_fla.json --md $W/bench_fla.md > $W/bench_fla.txt 2>&1
el bench done
( $P cli.py check --op decayed --backend cupy:chunked_mma_wgk --dtype float16 -j 3 --time-limit $(left 545) --json $W/check.json > $W/check.txt 2> $W/check_progress.txt; el check done )
kill $TARPID
el all done
