#!/usr/bin/env bash
# callAD (2026-12-05, seventh session; prepared, to run after callAC): the 16-bit walkers' decay factored in chunks
# of small span (tc::intra_frags FAST, docs/kernels/decayed.md "The decay factored in chunks of small span") -- the
# decayed 16-bit GPU tests (the new test_decays_of_small_span_match_recurrence among them), check of the float16 and
# bfloat16 defaults and _wgb, the 64k / 16k splits of _wgk and _wgb on the bench's decays (factored) and on
# [-30, 0] (every chunk on the exps), then fwd+bwd against fla-gla-gamma (float16, bfloat16) in the same run.
set -x
source scripts/device_call.sh ad
warm_fla decayed:float16 decayed:bfloat16
( time timeout 150 $P cli.py warmup --op decayed --backend cupy -j 10 ) > $W/warm.txt 2>&1
el warmup done
timeout 170 $P scripts/gpu_test_shards.py --jobs 8 --piece 60 --timeout 150 --out $W/tests -- \
   -k "small_span or beyond_the_16bit or (decayed and not float32) or anchor or 16bit_log_decays" \
   tests/test_cupy_chunked_mma.py > $W/tests.txt 2>&1
el tests done
$P cli.py check --op decayed --backend cupy:chunked_mma_wgk --backend cupy:chunked_mma_wgb --dtype float16 -j 6 \
   --time-limit 45 --json $W/check_f16.json > $W/check_f16.txt 2> $W/check_f16_progress.txt
$P cli.py check --op decayed --backend cupy --dtype bfloat16 -j 6 --time-limit 45 --json $W/check_bf16.json \
   > $W/check_bf16.txt 2> $W/check_bf16_progress.txt
el check done
for T in 65536 16384; do
  for g in bench strong; do
    extra=""; [ $g = strong ] && extra="--log-decay-range -30 0"
    timeout 40 $P cli.py kernels --op decayed --backend cupy:chunked_mma_wgk --backend cupy:chunked_mma_wgb \
       --dtype float16 --T $T $extra --json $W/kernels_${T}_${g}.json > $W/kernels_${T}_${g}.txt 2>&1
  done
done
el kernels done
wait $FPIDS
el fla done
export FLA_CACHE_RESULTS=1
timeout $(left 450) $P cli.py bench --grid headline --op decayed --dtype float16 --T 16384 --T 65536 \
   --backend cupy --backend cupy:chunked_mma_wgb --backend peer --pass fwdbwd --budget 30 \
   --json $W/bench_f16.json --md $W/bench_f16.md > $W/bench_f16.txt 2>&1
el bench float16 done
timeout $(left 540) $P cli.py bench --grid headline --op decayed --dtype bfloat16 --T 16384 --T 65536 \
   --backend cupy --backend peer --pass fwdbwd --budget 30 --json $W/bench_bf16.json --md $W/bench_bf16.md \
   > $W/bench_bf16.txt 2>&1
el bench bfloat16 done
call_end
