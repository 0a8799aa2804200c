#!/usr/bin/env bash
# callP (2026-12-04, third session; tree with the Trailer's values in registers, callO's): the rest of the GPU
# verification of that change -- every linear GPU test, the ZeroS fused3 tests, and the check sweeps of the defaults it
# touched beside callO's (linear wgb float16 / bfloat16 and dqr float32, decayed bfloat16 / float32, ZeroS fused3).
set -x
P=python3
W=/tmp/c; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/c.tgz -C /tmp c; }
( while true; do sleep 12; tar czf $OUT/c.tmp.tgz -C /tmp c 2>/dev/null && mv $OUT/c.tmp.tgz $OUT/c.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
( time timeout 170 $P cli.py warmup --op linear --op zeros --op decayed --backend cupy -j 14 ) > $W/warm.txt 2>&1
el warmup done
timeout $(left 300) $P scripts/gpu_test_shards.py --jobs 8 --piece 80 --timeout 120 --out $W/tests -- -k "not numba and (linear or fused3)" \
   tests/test_cupy_chunked_mma.py tests/test_gpu_state.py tests/test_cupy_zeros_mma.py > $W/tests.txt 2>&1
el tests done
( $P cli.py check --op linear --backend cupy:chunked_mma_wgb --dtype float16 --dtype bfloat16 -j 4 --time-limit $(left 330) --json $W/check_lin16.json > $W/check_lin16.txt 2> $W/check_lin16_progress.txt; el check linear 16-bit done )
( $P cli.py check --op linear --backend cupy:chunked_mma_dqr --dtype float32 -j 4 --time-limit $(left 355) --json $W/check_lin32.json > $W/check_lin32.txt 2> $W/check_lin32_progress.txt; el check linear float32 done )
( $P cli.py check --op decayed --backend cupy:chunked_mma --dtype bfloat16 -j 4 --time-limit $(left 375) --json $W/check_decbf.json > $W/check_decbf.txt 2> $W/check_decbf_progress.txt; el check decayed bf16 done )
( $P cli.py check --op decayed --backend cupy:chunked_mma_dqr --dtype float32 -j 4 --time-limit $(left 395) --json $W/check_dec32.json > $W/check_dec32.txt 2> $W/check_dec32_progress.txt; el check decayed f32 done )
( $P cli.py check --op zeros --backend cupy:chunked_mma_fused3 -j 4 --time-limit $(left 415) --json $W/check_zeros.json > $W/check_zeros.txt 2> $W/check_zeros_progress.txt; el check zeros done )
kill $TARPID
el all done
