#!/usr/bin/env bash
# callAF (2026-12-05, seventh session, late: lending came back with ~45 min of the session left): callAC and callAD
# trimmed into one call -- correctness first (the GPU tests and check cells of the exact float32 walkers _wgpa, _wgpt
# and decayed _wgp, and of the 16-bit decayed walkers with the factored decay, whose default kernels changed), then
# the cells that decide the goals at 64k against fla in the same run: linear and decayed float32 (_wgpt, _wgpa against
# fla TF32), decayed float16 (the default against fla-gla-gamma) and the decayed float16 split on the bench's decays
# (factored) and on [-30, 0] (the exps).  The 16k cells, tune_xscale and ZeroS (callAE) are left for a later call.
set -x
source scripts/device_call.sh af
warm_fla linear decayed decayed:float16
( time timeout 150 $P cli.py warmup --op linear --op decayed --backend cupy -j 10 ) > $W/warm.txt 2>&1
el warmup done
timeout 150 $P scripts/gpu_test_shards.py --jobs 8 --piece 60 --timeout 130 --out $W/tests -- \
   -k "xscale or wgp or wg_launches or small_span or beyond_the_16bit or (decayed and not float32) or anchor or 16bit_log_decays" \
   tests/test_cupy_chunked_mma.py tests/test_gpu_api.py tests/test_gpu_state.py tests/test_fast_launch.py > $W/tests.txt 2>&1
el tests done
$P cli.py check --op linear --backend cupy:chunked_mma_wgpa --backend cupy:chunked_mma_wgpt --dtype float32 -j 6 \
   --time-limit 40 --json $W/check_lin32.json > $W/check_lin32.txt 2> $W/check_lin32_progress.txt
$P cli.py check --op decayed --backend cupy:chunked_mma_wgpa --backend cupy:chunked_mma_wgpt --backend cupy:chunked_mma_wgp \
   --dtype float32 -j 6 --time-limit 50 --json $W/check_dec32.json > $W/check_dec32.txt 2> $W/check_dec32_progress.txt
$P cli.py check --op decayed --backend cupy --dtype float16 --dtype bfloat16 -j 6 --time-limit 40 \
   --json $W/check_dec16.json > $W/check_dec16.txt 2> $W/check_dec16_progress.txt
el check done
for g in bench strong; do
  extra=""; [ $g = strong ] && extra="--log-decay-range -30 0"
  timeout 30 $P cli.py kernels --op decayed --backend cupy --dtype float16 --T 65536 $extra \
     --json $W/kernels_dec16_64k_${g}.json > $W/kernels_dec16_64k_${g}.txt 2>&1
done
timeout 30 $P cli.py kernels --op linear --backend cupy:chunked_mma_wgpt --dtype float32 --T 65536 \
   --json $W/kernels_lin32_wgpt_64k.json > $W/kernels_lin32_wgpt_64k.txt 2>&1
el kernels done
wait $FPIDS
el fla done
export FLA_CACHE_RESULTS=1
timeout $(left 360) $P cli.py bench --grid headline --op linear --dtype float32 --T 65536 \
   --backend cupy:chunked_mma_wgpt --backend cupy:chunked_mma_wgpa --backend peer --pass fwdbwd --budget 25 \
   --json $W/bench_lin32.json --md $W/bench_lin32.md > $W/bench_lin32.txt 2>&1
el bench linear done
timeout $(left 420) $P cli.py bench --grid headline --op decayed --dtype float32 --T 65536 \
   --backend cupy:chunked_mma_wgpt --backend cupy:chunked_mma_wgpa --backend peer --pass fwdbwd --budget 25 \
   --json $W/bench_dec32.json --md $W/bench_dec32.md > $W/bench_dec32.txt 2>&1
el bench decayed32 done
timeout $(left 470) $P cli.py bench --grid headline --op decayed --dtype float16 --T 65536 \
   --backend cupy --backend peer --pass fwdbwd --budget 20 \
   --json $W/bench_dec16.json --md $W/bench_dec16.md > $W/bench_dec16.txt 2>&1
el bench decayed16 done
call_end
