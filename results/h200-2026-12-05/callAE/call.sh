#!/usr/bin/env bash
# callAE (2026-12-05, seventh session; prepared, to run after callAD): ZeroS's dk parts summed in 16-byte groups
# (zs::fused_dk_rows, docs/kernels/zeros.md "dk's parts summed in 16-byte groups") -- the ZeroS GPU tests of the fused
# variants, check of the default (fused3) in float16 and float32, the 16k splits (zeros_fused_bds: 207 us in callAB's
# float32), and fused3 against linear attention's defaults in the same run (the goal's ratio), no peers.
set -x
source scripts/device_call.sh ae
( time timeout 150 $P cli.py warmup --op zeros --op linear --backend cupy -j 10 ) > $W/warm.txt 2>&1
el warmup done
timeout 170 $P scripts/gpu_test_shards.py --jobs 8 --piece 60 --timeout 150 --out $W/tests -- -k "fused" \
   tests/test_cupy_zeros_mma.py > $W/tests.txt 2>&1
el tests done
$P cli.py check --op zeros --backend cupy --dtype float16 --dtype float32 -j 6 --time-limit 60 \
   --json $W/check.json > $W/check.txt 2> $W/check_progress.txt
el check done
for dt in float32 float16; do
  timeout 40 $P cli.py kernels --op zeros --backend cupy:chunked_mma_fused3 --dtype $dt --T 16384 \
     --json $W/kernels_zeros_${dt}_16k.json > $W/kernels_zeros_${dt}_16k.txt 2>&1
done
el kernels done
timeout $(left 500) $P cli.py bench --grid headline --op zeros --op linear --dtype float16 --dtype float32 \
   --T 4096 --T 16384 --backend cupy --no-peers --pass fwdbwd --budget 40 --json $W/bench_zeros.json \
   --md $W/bench_zeros.md > $W/bench_zeros.txt 2>&1
el bench done
call_end
