#!/usr/bin/env bash
# callR (2026-12-04, fourth session): the gradients of a pass in one allocation up to OUTPUTS_GROUP_MAX (every op's
# backward above 4 MiB) and tc_dg's carry as a block sum -- the GPU tests (softmax fa2 / API; every decayed test and
# the merge-bound tests of linear and ZeroS, apart and grouped), checks of cupy:fa2 and of decayed wgk float16 / dqr
# float32; then quiet: the A/B of the host orders in one process, the goal's measure (three processes), the decayed
# float16 splits at 64k / 16k, decayed and linear float16 at 64k against fla in the same run.
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
  FLA_CACHE_RESULTS=1 timeout 230 $P cli.py bench --grid headline --op $op --backend peer --dtype float16 --T 1024 --budget 5 > $W/flac-$op.txt 2>&1 &
  FPIDS="$FPIDS $!"
done
( time timeout 200 $P cli.py warmup --op linear --op decayed --op zeros --backend cupy -j 8 ) > $W/warm_lin.txt 2>&1 &
WPID=$!
( time timeout 60 $P cli.py warmup --op softmax --backend cupy -j 4 ) > $W/warm_sm.txt 2>&1
el warmup softmax done
timeout 160 $P scripts/gpu_test_shards.py --jobs 3 --piece 40 --timeout 150 --out $W/tests_sm -- -k "not numba and (fa2 or api or launches)" \
   tests/test_cupy_softmax.py tests/test_gpu_api.py > $W/tests_sm.txt 2>&1
el softmax tests done
wait $WPID
el warmup rest done
timeout $(left 330) $P scripts/gpu_test_shards.py --jobs 8 --piece 60 --timeout 150 --out $W/tests_dec -- -k "not numba and (decayed or merge_bound)" \
   tests/test_cupy_chunked_mma.py tests/test_decayed_log_decays.py tests/test_gpu_state.py tests/test_cupy_zeros_mma.py > $W/tests_dec.txt 2>&1
el decayed tests done
( $P cli.py check --op softmax --backend cupy:fa2 --dtype float16 -j 3 --time-limit 40 --json $W/check_sm.json > $W/check_sm.txt 2> $W/check_sm_progress.txt; el check softmax done )
( $P cli.py check --op decayed --backend cupy:chunked_mma_wgk --dtype float16 -j 4 --time-limit $(left 390) --json $W/check_dec16.json > $W/check_dec16.txt 2> $W/check_dec16_progress.txt; el check decayed f16 done )
( $P cli.py check --op decayed --backend cupy:chunked_mma_dqr --dtype float32 -j 4 --time-limit $(left 420) --json $W/check_dec32.json > $W/check_dec32.txt 2> $W/check_dec32_progress.txt; el check decayed f32 done )
wait $FPIDS
el fla done
timeout 60 $P _dev/order_ab.py 1024 10 > $W/order_ab_1024.json 2> $W/order_ab_1024.err
el ab done
for r in 1 2 3; do
  timeout 30 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 12 --json $W/sm1024_$r.json --md $W/sm1024_$r.md > $W/sm1024_$r.txt 2>&1
done
el sm1024 done
for t in 65536 16384; do
  timeout 40 $P cli.py kernels --op decayed --backend cupy:chunked_mma_wgk --dtype float16 --T $t --json $W/kernels_decayed_float16_$t.json > $W/kernels_decayed_float16_$t.txt 2>&1
done
el kernels done
export FLA_CACHE_RESULTS=1
timeout $(left 585) $P cli.py bench --grid headline --op decayed --op linear --dtype float16 --T 65536 \
   --backend cupy:chunked_mma_wgk --backend cupy:chunked_mma_wgb --backend peer --pass fwdbwd --budget 60 --json $W/bench_fla.json --md $W/bench_fla.md > $W/bench_fla.txt 2>&1
el bench done
kill $TARPID
el all done
