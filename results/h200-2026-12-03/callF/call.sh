#!/usr/bin/env bash
# callF: linear and decayed against fla in one process, float16, T 16k and 64k: the default, the dq fold, fla
# chunk_linear_attn and chunk_simple_gla with a per-head g_gamma (its per-token-g backward refuses Hopper)
set -x
P=python3
W=/tmp/f; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/f.tgz -C /tmp f; }
( while true; do sleep 15; tar czf $OUT/f.tmp.tgz -C /tmp f 2>/dev/null && mv $OUT/f.tmp.tgz $OUT/f.tgz; done ) &
TARPID=$!
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
timeout 280 $P cli.py bench --op linear --op decayed --backend cupy:chunked_mma --backend cupy:chunked_mma_dqf --backend peer:fla-linear --backend peer:fla-gla-gamma --dtype float16 --T 16384 --T 65536 --D 64 --pass fwdbwd --budget 260 --json $W/bench_fla.json --md $W/bench_fla.md > $W/bench_fla.txt 2>&1
el bench done
kill $TARPID
el all done
