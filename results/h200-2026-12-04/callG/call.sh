#!/usr/bin/env bash
# callG (2026-12-04): the default change verified -- tests/test_gpu_api.py (every variant through the public API,
# cupy:chunked_mma_wgb the linear 16-bit default) and fwd+bwd at T = 1k, 2k: chunked_mma_wgb against chunked_mma_dqr.
set -x
P=python3
W=/tmp/c; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/c.tgz -C /tmp c; }
( while true; do sleep 12; tar czf $OUT/c.tmp.tgz -C /tmp c 2>/dev/null && mv $OUT/c.tmp.tgz $OUT/c.tgz; done ) &
TARPID=$!
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
timeout 60 $P cli.py bench --grid headline --op linear --dtype float16 --dtype bfloat16 --T 1024 --T 2048 \
   --backend cupy:chunked_mma_wgb --backend cupy:chunked_mma_dqr --no-peers --pass fwdbwd --budget 15 --json $W/bench_short.json --md $W/bench_short.md > $W/bench_short.txt 2>&1
el bench done
timeout 210 $P scripts/gpu_test_shards.py --jobs 8 --timeout 200 --out $W/tests -- -k "not numba" tests/test_gpu_api.py > $W/tests.txt 2>&1
el tests done
kill $TARPID
el all done
