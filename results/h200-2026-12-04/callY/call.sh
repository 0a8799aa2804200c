#!/usr/bin/env bash
# callY (2026-12-04, fifth session; the final tree): cupy:chunked_mma_wgp back on the float16 planes (the pairs walkers
# with the FS template argument; tg_fwd's pairs bounded to 3 blocks per SM) and the in-walker split as the rung
# cupy:chunked_mma_wgpw -- GPU tests of the xscale paths and every variant-parametrised GPU test for wgx / wgp / wgpw,
# the wgs walker; check of wgp and wgpw; the split at 64k; linear float32 at 4k-64k against fla in the same run.
set -x
P=python3
W=/tmp/y; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/y.tgz -C /tmp y; }
( while true; do sleep 12; tar czf $OUT/y.tmp.tgz -C /tmp y 2>/dev/null && mv $OUT/y.tmp.tgz $OUT/y.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
FPIDS=""
for op in linear; do
  FLA_CACHE_RESULTS=1 timeout 230 $P cli.py bench --grid headline --op $op --backend peer --dtype float32 --T 1024 --budget 5 > $W/flac-$op.txt 2>&1 &
  FPIDS="$FPIDS $!"
done
( time timeout 150 $P cli.py warmup --op linear --op decayed --backend cupy -j 10 ) > $W/warm.txt 2>&1
el warmup done
timeout 200 $P scripts/gpu_test_shards.py --jobs 8 --piece 60 --timeout 170 --out $W/tests -- -k "xscale or wgx or wgp or wg_launches or big or dqrev_wgs" \
   tests/test_cupy_chunked_mma.py tests/test_gpu_api.py tests/test_gpu_state.py tests/test_fast_launch.py tests/test_cupy_chunked.py > $W/tests.txt 2>&1
el tests done
$P cli.py check --op linear --backend cupy:chunked_mma_wgp --backend cupy:chunked_mma_wgpw --dtype float32 -j 6 --time-limit $(left 230) --json $W/check.json > $W/check.txt 2> $W/check_progress.txt
el check done
for T in 65536; do
  timeout 40 $P cli.py kernels --op linear --backend cupy:chunked_mma_wgp --dtype float32 --T $T --json $W/kernels_linear_f32_$T.json > $W/kernels_linear_f32_$T.txt 2>&1
done
el kernels done
wait $FPIDS
el fla done
export FLA_CACHE_RESULTS=1
timeout $(left 500) $P cli.py bench --grid headline --op linear --dtype float32 --T 4096 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_wgp --backend cupy:chunked_mma_wgx --backend cupy:chunked_mma_dqr --backend peer --pass fwdbwd --budget 75 --json $W/bench_lin32.json --md $W/bench_lin32.md > $W/bench_lin32.txt 2>&1
el bench linear done
kill $TARPID
el all done
