#!/usr/bin/env bash
# callAC (2026-12-04, sixth session; prepared, run in a later session): the exact float32 walkers of the session --
# cupy:chunked_mma_wgpa (the pairs staged by cp.async where they will lie, split in place; xscale 4) and
# cupy:chunked_mma_wgpt (the same under an exponent per chunk tile found by the walkers, no exponent pass; xscale 5),
# linear and decayed -- and decayed _wgp again (its P rows now split at a power of two each): GPU tests, check cells,
# the three storages against each other in one process (scripts/tune_xscale.py --xscale 2 --xscale 4 --xscale 5:
# 2 and 4 bit for bit), the 64k splits, and against fla in the same run (decayed _wgp beside: against callAB's 5.217 ms,
# what the P row scales cost).
set -x
source scripts/device_call.sh ac
warm_fla linear decayed
( time timeout 150 $P cli.py warmup --op linear --op decayed --backend cupy -j 10 ) > $W/warm.txt 2>&1
el warmup done
timeout 150 $P scripts/gpu_test_shards.py --jobs 8 --piece 60 --timeout 130 --out $W/tests -- -k "xscale or wgp or wg_launches" \
   tests/test_cupy_chunked_mma.py tests/test_gpu_api.py tests/test_gpu_state.py tests/test_fast_launch.py tests/test_cupy_chunked.py > $W/tests.txt 2>&1
el tests done
$P cli.py check --op linear --backend cupy:chunked_mma_wgpa --backend cupy:chunked_mma_wgpt --dtype float32 -j 6 --time-limit 45 --json $W/check_lin.json > $W/check_lin.txt 2> $W/check_lin_progress.txt
$P cli.py check --op decayed --backend cupy:chunked_mma_wgpa --backend cupy:chunked_mma_wgpt --backend cupy:chunked_mma_wgp --dtype float32 -j 6 --time-limit 60 --json $W/check_dec.json > $W/check_dec.txt 2> $W/check_dec_progress.txt
el check done
timeout 80 $P scripts/tune_xscale.py --xscale 2 --xscale 4 --xscale 5 --vary lowreg --T 16384 --T 65536 --rounds 8 --json $W/tune_lin.json > $W/tune_lin.txt 2>&1
el tune linear done
timeout 80 $P scripts/tune_xscale.py --decay --xscale 2 --xscale 4 --xscale 5 --vary lowreg --T 16384 --T 65536 --rounds 8 --json $W/tune_dec.json > $W/tune_dec.txt 2>&1
el tune decayed done
for spec in linear:wgpt linear:wgpa decayed:wgpt; do
  op=${spec%%:*}; v=${spec##*:}
  timeout 35 $P cli.py kernels --op $op --backend cupy:chunked_mma_$v --dtype float32 --T 65536 --json $W/kernels_${op}_${v}_64k.json > $W/kernels_${op}_${v}_64k.txt 2>&1
done
el kernels done
wait $FPIDS
el fla done
export FLA_CACHE_RESULTS=1
timeout $(left 460) $P cli.py bench --grid headline --op linear --dtype float32 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_wgpt --backend cupy:chunked_mma_wgpa --backend cupy:chunked_mma_wgp --backend peer --pass fwdbwd --budget 35 --json $W/bench_lin32.json --md $W/bench_lin32.md > $W/bench_lin32.txt 2>&1
el bench linear done
timeout $(left 545) $P cli.py bench --grid headline --op decayed --dtype float32 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_wgpt --backend cupy:chunked_mma_wgpa --backend cupy:chunked_mma_wgp --backend peer --pass fwdbwd --budget 35 --json $W/bench_dec32.json --md $W/bench_dec32.md > $W/bench_dec32.txt 2>&1
el bench decayed done
call_end
