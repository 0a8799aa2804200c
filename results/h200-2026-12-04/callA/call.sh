#!/usr/bin/env bash
# callA (2026-12-04): (1) quiet GPU: segment-length sweep of the chunk core at 16k/64k (linear, decayed float16;
# linear bfloat16 16k) and the first `cli.py kernels` splits; (2) GPU verification of the last session's unverified
# kernels/ edits (tests) and the rest of the CuPy check sweep (linear 656, ZeroS 180 cells).
set -x
P=python3
W=/tmp/a; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/a.tgz -C /tmp a; }
( while true; do sleep 12; tar czf $OUT/a.tmp.tgz -C /tmp a 2>/dev/null && mv $OUT/a.tmp.tgz $OUT/a.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
( time timeout 120 $P cli.py warmup --op linear --op decayed --op zeros --backend cupy -j 14 ) > $W/warm.txt 2>&1
el warm done
L="--L 4 --L 5 --L 6 --L 7 --L 8 --L 10 --L 11 --L 12 --L 16"
timeout 70 $P scripts/tune_chunked_mma.py --dtype float16 --T 16384 --T 65536 $L --reps 11 --json $W/tune_linear_f16.json > $W/tune_linear_f16.txt 2>&1
el tune linear done
timeout 60 $P scripts/tune_chunked_mma.py --dtype float16 --decay --T 16384 --T 65536 $L --reps 11 --json $W/tune_decayed_f16.json > $W/tune_decayed_f16.txt 2>&1
el tune decayed done
timeout 30 $P scripts/tune_chunked_mma.py --dtype bfloat16 --T 16384 $L --reps 11 --json $W/tune_linear_bf16.json > $W/tune_linear_bf16.txt 2>&1
el tune bf16 done
timeout 40 $P cli.py kernels --op linear --backend cupy --dtype float16 --T 65536 --json $W/kernels_linear_f16_64k.json > $W/kernels_linear_f16_64k.txt 2>&1
timeout 40 $P cli.py kernels --op decayed --backend cupy --dtype bfloat16 --T 65536 --json $W/kernels_decayed_bf16_64k.json > $W/kernels_decayed_bf16_64k.txt 2>&1
timeout 30 $P cli.py kernels --op linear --backend cupy --dtype float16 --T 16384 --json $W/kernels_linear_f16_16k.json > $W/kernels_linear_f16_16k.txt 2>&1
el kernels done
PIDS=""
timeout $(left 520) $P scripts/gpu_test_shards.py --jobs 5 --timeout $(left 510) --out $W/tests -- -k "not numba" \
   tests/test_fast_launch.py tests/test_cupy_chunked_mma.py tests/test_cupy_softmax.py tests/test_cupy_zeros_mma.py tests/test_kernel_split.py tests/test_gpu_api.py > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
SL=""; for c in M N O Q; do SL="$SL --skip-passed results/h200-2026-12-03/call$c/check_linear.json"; done
( $P cli.py check --op linear --backend cupy -j 5 --time-limit $(left 500) --json $W/check_linear.json $SL > $W/check_linear.txt 2> $W/check_linear_progress.txt; el check linear done ) &
PIDS="$PIDS $!"
SZ=""; for c in M N Q; do SZ="$SZ --skip-passed results/h200-2026-12-03/call$c/check_zeros.json"; done
( $P cli.py check --op zeros --backend cupy -j 5 --time-limit $(left 500) --json $W/check_zeros.json $SZ > $W/check_zeros.txt 2> $W/check_zeros_progress.txt; el check zeros done ) &
PIDS="$PIDS $!"
wait $PIDS
kill $TARPID
el all done
