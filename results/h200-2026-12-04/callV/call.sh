#!/usr/bin/env bash
# callV (2026-12-04, fifth session): cupy:chunked_mma_wgx (float32 through the float16 wgmma walkers, tag tf32) --
# GPU tests of the walkers it touches, its check cells, the kernels' split at 64k, and linear / decayed float32 against
# fla in the same run (wgx, the 3xTF32 default, the TF32 rung); float16 linear at 64k as the control (the 16-bit
# walkers gained a trailing argument).
set -x
P=python3
W=/tmp/v; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/v.tgz -C /tmp v; }
( while true; do sleep 12; tar czf $OUT/v.tmp.tgz -C /tmp v 2>/dev/null && mv $OUT/v.tmp.tgz $OUT/v.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
FPIDS=""
for op in linear decayed; do
  FLA_CACHE_RESULTS=1 timeout 230 $P cli.py bench --grid headline --op $op --backend peer --dtype float32 --T 1024 --budget 5 > $W/flac-$op.txt 2>&1 &
  FPIDS="$FPIDS $!"
done
( time timeout 150 $P cli.py warmup --op linear --op decayed --backend cupy -j 10 ) > $W/warm.txt 2>&1
el warmup done
timeout 200 $P scripts/gpu_test_shards.py --jobs 8 --piece 60 --timeout 170 --out $W/tests -- -k "xscale or wg or big or launch" \
   tests/test_cupy_chunked_mma.py tests/test_cupy_host_path.py > $W/tests.txt 2>&1
el tests done
$P cli.py check --op linear --op decayed --backend cupy:chunked_mma_wgx --dtype float32 -j 4 --time-limit $(left 330) --json $W/check.json > $W/check.txt 2> $W/check_progress.txt
el check done
for op in linear decayed; do
  timeout 40 $P cli.py kernels --op $op --backend cupy:chunked_mma_wgx --dtype float32 --T 65536 --json $W/kernels_${op}_wgx_64k.json > $W/kernels_${op}_wgx_64k.txt 2>&1
done
timeout 40 $P cli.py kernels --op linear --backend cupy --dtype float16 --T 65536 --json $W/kernels_linear_f16_64k.json > $W/kernels_linear_f16_64k.txt 2>&1
el kernels done
wait $FPIDS
el fla done
export FLA_CACHE_RESULTS=1
timeout $(left 470) $P cli.py bench --grid headline --op linear --dtype float32 --T 1024 --T 4096 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_wgx --backend cupy:chunked_mma_dqr --backend cupy:chunked_mma_tf32 --backend peer --pass fwdbwd --budget 60 --json $W/bench_lin32.json --md $W/bench_lin32.md > $W/bench_lin32.txt 2>&1
el bench linear done
timeout $(left 545) $P cli.py bench --grid headline --op decayed --dtype float32 --T 4096 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_wgx --backend cupy:chunked_mma_dqr --backend peer --pass fwdbwd --budget 50 --json $W/bench_dec32.json --md $W/bench_dec32.md > $W/bench_dec32.txt 2>&1
el bench decayed done
kill $TARPID
el all done
