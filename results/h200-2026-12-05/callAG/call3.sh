#!/usr/bin/env bash
set -x
source scripts/device_call.sh ag3
for dt in float32 float16; do
  timeout 45 $P cli.py kernels --op zeros --backend cupy:chunked_mma_fused3 --dtype $dt --T 16384 \
     --json $W/kernels_zeros_${dt}_16k.json > $W/kernels_zeros_${dt}_16k.txt 2>&1
  el kernels $dt done
done
timeout $(left 150) $P cli.py bench --grid headline --op zeros --op linear --dtype float16 --dtype float32 \
   --T 16384 --backend cupy --no-peers --pass fwdbwd --budget 8 --json $W/bench_zeros.json \
   --md $W/bench_zeros.md > $W/bench_zeros.txt 2>&1
el bench done
call_end
