#!/usr/bin/env bash
# callO (2026-12-04, third session): cupy:fa2 on the tail backward up to 16k -- its GPU tests with the API tests,
# check of cupy:fa2, the goal's measure (softmax float16 T = 1024 through the API, three processes) and an A/B of the
# atomic and tail forms through the API in one process; the Trailer's values in registers (branch wip-trailer-regs's
# diff: every decayed GPU test, the linear wgb and ZeroS fused3 tests, decayed float16 splits of wgk and wgb at 16k /
# 64k against callL's, check of decayed wgk and wgb float16).
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
timeout 60 $P _dev/tail_ab.py 1024 16 > $W/tail_ab_1024.json 2> $W/tail_ab_1024.err
el ab done
for r in 1 2 3; do
  timeout 40 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 15 --json $W/sm1024_$r.json --md $W/sm1024_$r.md > $W/sm1024_$r.txt 2>&1
done
el sm1024 done
( time timeout 230 $P cli.py warmup --op decayed --op linear --op zeros --backend cupy -j 10 ) > $W/warm_dec.txt 2>&1 &
WPID=$!
timeout 150 $P scripts/gpu_test_shards.py --jobs 4 --piece 30 --timeout 140 --out $W/tests_sm -- -k "not numba and (fa2 or api or launches)" \
   tests/test_cupy_softmax.py tests/test_gpu_api.py > $W/tests_sm.txt 2>&1
el softmax tests done
( $P cli.py check --op softmax --backend cupy:fa2 --dtype float16 --dtype bfloat16 -j 3 --time-limit 60 --json $W/check_sm.json > $W/check_sm.txt 2> $W/check_sm_progress.txt; el check softmax done )
wait $WPID
el warmup decayed done
timeout 60 $P -m pytest -q -m gpu tests/test_wgmma.py -p no:cacheprovider > $W/test_wgmma.txt 2>&1
timeout $(left 480) $P scripts/gpu_test_shards.py --jobs 8 --piece 60 --timeout 170 --out $W/tests_dec -- -k "not numba and (decayed or (linear and (wgb or launches)) or fused3)" \
   tests/test_cupy_chunked_mma.py tests/test_decayed_log_decays.py tests/test_gpu_state.py tests/test_cupy_zeros_mma.py > $W/tests_dec.txt 2>&1
el decayed tests done
for c in "decayed float16 65536" "decayed float16 16384"; do set -- $c
  timeout 40 $P cli.py kernels --op $1 --backend cupy:chunked_mma_wgk --backend cupy:chunked_mma_wgb --dtype $2 --T $3 --json $W/kernels_$1_$2_$3.json > $W/kernels_$1_$2_$3.txt 2>&1
done
el kernels done
( $P cli.py check --op decayed --backend cupy:chunked_mma_wgk --backend cupy:chunked_mma_wgb --dtype float16 -j 3 --time-limit $(left 560) --json $W/check_dec.json > $W/check_dec.txt 2> $W/check_dec_progress.txt; el check decayed done )
kill $TARPID
el all done
