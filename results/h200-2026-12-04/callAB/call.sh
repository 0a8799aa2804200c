#!/usr/bin/env bash
# callAB (2026-12-04, sixth session): what the fifth session could not verify on the GPU -- the xscale / wgp / wgx GPU
# tests (the decayed pairs' cases ran on the CPU emulator only), the 15 decayed _wgp check cells left, the kernel
# commits after callAA (tg::red_slot, the two-stage pairs forward) -- then the forward pairs walker at one and two
# stages (scripts/tune_xscale.py --vary fwd_stages), the ZeroS float32 split at 16k, and _wgp against fla at 64k
# (linear; decayed with fla-gla-gamma) in the same run.
set -x
P=python3
W=/tmp/ab; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/ab.tgz -C /tmp ab; }
( while true; do sleep 10; tar czf $OUT/ab.tmp.tgz -C /tmp ab 2>/dev/null && mv $OUT/ab.tmp.tgz $OUT/ab.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
FPIDS=""
for op in linear decayed; do
  FLA_CACHE_RESULTS=1 timeout 240 $P cli.py bench --grid headline --op $op --backend peer --dtype float32 --T 1024 --budget 5 > $W/flac-$op.txt 2>&1 &
  FPIDS="$FPIDS $!"
done
( time timeout 150 $P cli.py warmup --op linear --op decayed --backend cupy -j 10 ) > $W/warm.txt 2>&1
el warmup done
timeout 200 $P scripts/gpu_test_shards.py --jobs 8 --piece 60 --timeout 170 --out $W/tests -- -k "xscale or wgx or wgp" \
   tests/test_cupy_chunked_mma.py tests/test_gpu_api.py tests/test_gpu_state.py tests/test_fast_launch.py tests/test_cupy_chunked.py > $W/tests.txt 2>&1
el tests done
$P cli.py check --op decayed --backend cupy:chunked_mma_wgp --dtype float32 -j 6 --time-limit 80 --json $W/check.json > $W/check.txt 2> $W/check_progress.txt
el check done
timeout 120 $P scripts/tune_xscale.py --vary fwd_stages --T 16384 --T 65536 --rounds 10 --json $W/tune_fwd.json > $W/tune_fwd.txt 2>&1
el tune done
timeout 60 $P cli.py kernels --op zeros --backend cupy:chunked_mma_fused3 --dtype float32 --T 16384 --json $W/kernels_zeros_f32_16k.json > $W/kernels_zeros_f32_16k.txt 2>&1
el kernels done
wait $FPIDS
el fla done
export FLA_CACHE_RESULTS=1
timeout $(left 470) $P cli.py bench --grid headline --op linear --dtype float32 --T 65536 \
   --backend cupy:chunked_mma_wgp --backend peer --pass fwdbwd --budget 30 --json $W/bench_lin32.json --md $W/bench_lin32.md > $W/bench_lin32.txt 2>&1
el bench linear done
timeout $(left 540) $P cli.py bench --grid headline --op decayed --dtype float32 --T 65536 \
   --backend cupy:chunked_mma_wgp --backend peer --pass fwdbwd --budget 30 --json $W/bench_dec32.json --md $W/bench_dec32.md > $W/bench_dec32.txt 2>&1
el bench decayed done
kill $TARPID
el all done
