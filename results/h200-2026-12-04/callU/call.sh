#!/usr/bin/env bash
# callU (2026-12-04, fourth session; the final tree): the review mends (tc::logdecay_at, tc::RevWeights, tg's
# post_state_max / state_to_tile, fa_row_counters, fa_block_keys / fa_shared_range: machine code unchanged under
# NVRTC 12.9) through the GPU tests of the kernels they touch and two checks; then linear and decayed float16 at
# 1k-16k against fla in the same run.
set -x
P=python3
W=/tmp/c; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/c.tgz -C /tmp c; }
( while true; do sleep 12; tar czf $OUT/c.tmp.tgz -C /tmp c 2>/dev/null && mv $OUT/c.tmp.tgz $OUT/c.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
FPIDS=""
for op in linear decayed; do
  FLA_CACHE_RESULTS=1 timeout 220 $P cli.py bench --grid headline --op $op --backend peer --dtype float16 --T 1024 --budget 5 > $W/flac-$op.txt 2>&1 &
  FPIDS="$FPIDS $!"
done
( time timeout 150 $P cli.py warmup --op softmax --op linear --op decayed --backend cupy -j 10 ) > $W/warm.txt 2>&1
el warmup done
timeout 200 $P scripts/gpu_test_shards.py --jobs 8 --piece 60 --timeout 170 --out $W/tests -- -k "not numba and (fa2 or api or launches or decayed or wg)" \
   tests/test_cupy_softmax.py tests/test_gpu_api.py tests/test_cupy_chunked_mma.py tests/test_decayed_log_decays.py tests/test_wgmma.py > $W/tests.txt 2>&1
el tests done
( $P cli.py check --op softmax --backend cupy:fa2 --dtype float16 -j 3 --time-limit 40 --json $W/check_sm.json > $W/check_sm.txt 2> $W/check_sm_progress.txt; el check softmax done )
( $P cli.py check --op decayed --backend cupy:chunked_mma_wgk --dtype float16 -j 4 --time-limit $(left 300) --json $W/check_dec.json > $W/check_dec.txt 2> $W/check_dec_progress.txt; el check decayed done )
wait $FPIDS
el fla done
export FLA_CACHE_RESULTS=1
timeout $(left 390) $P cli.py bench --grid headline --op linear --op decayed --dtype float16 --T 1024 --T 2048 --T 4096 --T 16384 \
   --backend cupy:chunked_mma_wgb --backend cupy:chunked_mma_wgk --backend peer --pass fwdbwd --budget 60 --json $W/bench_fla.json --md $W/bench_fla.md > $W/bench_fla.txt 2>&1
el bench done
kill $TARPID
el all done
