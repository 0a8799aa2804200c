#!/usr/bin/env bash
# callAG, part 1 (2026-12-05, eighth session: 753 s of device time left after four failed starts and a machine taken
# back mid-call): callAF split in two so that each part's results come back on their own.  Part 1: correctness of
# everything changed since callAB (callAF's GPU tests and check cells), the decayed float16 64k split on the bench's
# decays and on [-30, 0], and fla's Triton autotuning for part 2's peers (cached on the machine: FLA_CACHE_RESULTS).
set -x
source scripts/device_call.sh ag1
warm_fla linear decayed decayed:float16
( time timeout 150 $P cli.py warmup --op linear --op decayed --backend cupy -j 10 ) > $W/warm.txt 2>&1
el warmup done
timeout 120 $P scripts/gpu_test_shards.py --jobs 8 --piece 60 --timeout 100 --out $W/tests -- \
   -k "xscale or wgp or wg_launches or small_span or beyond_the_16bit or (decayed and not float32) or anchor or 16bit_log_decays" \
   tests/test_cupy_chunked_mma.py tests/test_gpu_api.py tests/test_gpu_state.py tests/test_fast_launch.py > $W/tests.txt 2>&1
el tests done
$P cli.py check --op decayed --backend cupy --dtype float16 --dtype bfloat16 -j 6 --time-limit 35 \
   --json $W/check_dec16.json > $W/check_dec16.txt 2> $W/check_dec16_progress.txt
$P cli.py check --op linear --backend cupy:chunked_mma_wgpa --backend cupy:chunked_mma_wgpt --dtype float32 -j 6 \
   --time-limit 30 --json $W/check_lin32.json > $W/check_lin32.txt 2> $W/check_lin32_progress.txt
$P cli.py check --op decayed --backend cupy:chunked_mma_wgpa --backend cupy:chunked_mma_wgpt --backend cupy:chunked_mma_wgp \
   --dtype float32 -j 6 --time-limit 40 --json $W/check_dec32.json > $W/check_dec32.txt 2> $W/check_dec32_progress.txt
el check done
for g in bench strong; do
  extra=""; [ $g = strong ] && extra="--log-decay-range -30 0"
  timeout 30 $P cli.py kernels --op decayed --backend cupy --dtype float16 --T 65536 $extra \
     --json $W/kernels_dec16_64k_${g}.json > $W/kernels_dec16_64k_${g}.txt 2>&1
done
el kernels done
wait $FPIDS
el fla done
call_end
