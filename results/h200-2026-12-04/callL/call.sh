#!/usr/bin/env bash
# callL (2026-12-04, third session; tree = main + wip-fa2-cast + wip-walk-uniform): fa2_bwd_cast (bench against
# fa2_atomic 1k-16k, softmax float16 T = 1024 through the API with each form as cupy:fa2's default, softmax GPU tests,
# check of fa2_cast) and tc::Walk's convergent scan (every decayed GPU test, decayed float16 kernel splits of wgk and
# wgb at 16k / 64k against callI's, check of decayed wgk).
set -x
P=python3
W=/tmp/c; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/c.tgz -C /tmp c; }
( while true; do sleep 12; tar czf $OUT/c.tmp.tgz -C /tmp c 2>/dev/null && mv $OUT/c.tmp.tgz $OUT/c.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
( time timeout 60 $P cli.py warmup --op softmax --backend cupy -j 8 ) > $W/warm_sm.txt 2>&1
el warmup softmax done
timeout 60 $P cli.py bench --grid headline --op softmax --dtype float16 --T 1024 --T 2048 --T 4096 --T 16384 \
   --backend cupy:fa2_cast --backend cupy:fa2_atomic --no-peers --pass fwdbwd --pass bwd --budget 20 --json $W/bench_cast.json --md $W/bench_cast.md > $W/bench_cast.txt 2>&1
el bench done
timeout 40 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 15 --json $W/sm1024.json --md $W/sm1024.md > $W/sm1024.txt 2>&1
timeout 40 $P _dev/fa2_set.py FA2_CAST_MAX_T=4096 -- bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 15 --json $W/sm1024_cast.json --md $W/sm1024_cast.md > $W/sm1024_cast.txt 2>&1
el sm1024 done
( time timeout 200 $P cli.py warmup --op decayed --backend cupy -j 10 ) > $W/warm_dec.txt 2>&1 &
WPID=$!
timeout 120 $P scripts/gpu_test_shards.py --jobs 4 --piece 30 --timeout 110 --out $W/tests_sm -- -k "not numba" \
   tests/test_cupy_softmax.py tests/test_gpu_api.py > $W/tests_sm.txt 2>&1
el softmax tests done
wait $WPID
el warmup decayed done
timeout 60 $P -m pytest -q -m gpu tests/test_wgmma.py -p no:cacheprovider > $W/test_wgmma.txt 2>&1
timeout $(left 400) $P scripts/gpu_test_shards.py --jobs 8 --piece 60 --timeout 150 --out $W/tests_dec -- -k "not numba and decayed" \
   tests/test_cupy_chunked_mma.py tests/test_decayed_log_decays.py tests/test_gpu_state.py > $W/tests_dec.txt 2>&1
el decayed tests done
for c in "decayed float16 65536" "decayed float16 16384"; do set -- $c
  timeout 40 $P cli.py kernels --op $1 --backend cupy:chunked_mma_wgk --backend cupy:chunked_mma_wgb --dtype $2 --T $3 --json $W/kernels_$1_$2_$3.json > $W/kernels_$1_$2_$3.txt 2>&1
done
el kernels done
( $P cli.py check --op softmax --backend cupy:fa2_cast --dtype float16 --dtype bfloat16 -j 3 --time-limit $(left 470) --json $W/check_sm.json > $W/check_sm.txt 2> $W/check_sm_progress.txt; el check softmax done )
( $P cli.py check --op decayed --backend cupy:chunked_mma_wgk --dtype float16 -j 3 --time-limit $(left 520) --json $W/check_dec.json > $W/check_dec.txt 2> $W/check_dec_progress.txt; el check decayed done )
kill $TARPID
el all done
