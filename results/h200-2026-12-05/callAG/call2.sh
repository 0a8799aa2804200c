#!/usr/bin/env bash
# callAG, part 2: the 64k goal cells against fla in the same run -- linear and decayed float32 (`_wgpt`, `_wgpa`
# against fla TF32), decayed float16 (the default, factored decay) -- on the machine part 1 left warm (fla's
# autotuning cached there; on a fresh machine warm_fla pays it again, 100-200 s).
set -x
source scripts/device_call.sh ag2
warm_fla linear decayed decayed:float16
wait $FPIDS
el fla done
export FLA_CACHE_RESULTS=1
timeout $(left 150) $P cli.py bench --grid headline --op linear --dtype float32 --T 65536 \
   --backend cupy:chunked_mma_wgpt --backend cupy:chunked_mma_wgpa --backend peer --pass fwdbwd --budget 20 \
   --json $W/bench_lin32.json --md $W/bench_lin32.md > $W/bench_lin32.txt 2>&1
el bench linear done
timeout $(left 220) $P cli.py bench --grid headline --op decayed --dtype float32 --T 65536 \
   --backend cupy:chunked_mma_wgpt --backend cupy:chunked_mma_wgpa --backend peer --pass fwdbwd --budget 20 \
   --json $W/bench_dec32.json --md $W/bench_dec32.md > $W/bench_dec32.txt 2>&1
el bench decayed32 done
timeout $(left 280) $P cli.py bench --grid headline --op decayed --dtype float16 --T 65536 \
   --backend cupy --backend peer --pass fwdbwd --budget 15 \
   --json $W/bench_dec16.json --md $W/bench_dec16.md > $W/bench_dec16.txt 2>&1
el bench decayed16 done
call_end
