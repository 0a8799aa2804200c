#!/usr/bin/env bash
# callB (2026-12-04): the float16 walkers with two barriers fewer per chunk (state_max_post), 16-bit segment states at
# two stages.  fla compiled and
# autotuned beside our warm-up (choices on disk); with the GPU alone: per-kernel splits, our defaults against fla in
# the same process (linear float16/bfloat16, decayed float16; 16k, 64k); then GPU tests of the core and ZeroS's
# tensor-core variants, and the check of the default CuPy variants of linear and decayed.
set -x
P=python3
W=/tmp/b; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/b.tgz -C /tmp b; }
( while true; do sleep 12; tar czf $OUT/b.tmp.tgz -C /tmp b 2>/dev/null && mv $OUT/b.tmp.tgz $OUT/b.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
FPIDS=""
for op_line in "linear float16" "linear bfloat16" "decayed float16"; do set -- $op_line
  FLA_CACHE_RESULTS=1 timeout 200 $P cli.py bench --grid headline --op $1 --backend peer --dtype $2 --T 1024 --budget 5 > $W/flac-$1-$2.txt 2>&1 &
  FPIDS="$FPIDS $!"
done
( time timeout 150 $P cli.py warmup --op linear --op decayed --op zeros --backend cupy -j 10 ) > $W/warm.txt 2>&1
el warm done
wait $FPIDS
el fla compiles done
for c in "linear float16 65536" "linear float16 16384" "decayed float16 65536" "linear bfloat16 65536"; do set -- $c
  timeout 30 $P cli.py kernels --op $1 --backend cupy --dtype $2 --T $3 --json $W/kernels_$1_$2_$3.json > $W/kernels_$1_$2_$3.txt 2>&1
done
el kernels done
export FLA_CACHE_RESULTS=1
timeout $(left 330) $P cli.py bench --grid headline --op linear --dtype float16 --dtype bfloat16 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_dqr --backend peer --pass fwdbwd --budget 40 --json $W/bench_fla_lin.json --md $W/bench_fla_lin.md > $W/bench_fla_lin.txt 2>&1
el bench fla linear done
timeout $(left 370) $P cli.py bench --grid headline --op decayed --dtype float16 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_dqr --backend peer --pass fwdbwd --budget 30 --json $W/bench_fla_dec.json --md $W/bench_fla_dec.md > $W/bench_fla_dec.txt 2>&1
el bench fla decayed done
PIDS=""
timeout $(left 540) $P scripts/gpu_test_shards.py --jobs 6 --timeout $(left 530) --out $W/tests -- -k "not numba" \
   tests/test_cupy_chunked_mma.py tests/test_cupy_zeros_mma.py > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
( $P cli.py check --op linear --op decayed --backend cupy:chunked_mma_dqr --dtype float16 -j 3 --time-limit $(left 530) --json $W/check.json > $W/check.txt 2> $W/check_progress.txt; el check done ) &
PIDS="$PIDS $!"
wait $PIDS
kill $TARPID
el all done
