#!/usr/bin/env bash
# callC (2026-12-04): the walkers back to 5a97e2b's, 16-bit linear segment states at two stages (seg_stages).  fla
# compiled beside our warm-up; with the GPU alone per-kernel splits, our default against fla in the same process
# (linear float16/bfloat16 16k/64k, decayed float16 64k), softmax float16 T = 1024 through the API; then GPU tests
# of the core and the host path beside the check of the default.
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
for op_line in "linear float16" "linear bfloat16" "decayed float16"; do set -- $op_line
  FLA_CACHE_RESULTS=1 timeout 200 $P cli.py bench --grid headline --op $1 --backend peer --dtype $2 --T 1024 --budget 5 > $W/flac-$1-$2.txt 2>&1 &
  FPIDS="$FPIDS $!"
done
( time timeout 150 $P cli.py warmup --op linear --op decayed --op softmax --backend cupy -j 10 ) > $W/warm.txt 2>&1
el warm done
wait $FPIDS
el fla compiles done
for c in "linear float16 65536" "decayed float16 65536" "linear float16 16384"; do set -- $c
  timeout 30 $P cli.py kernels --op $1 --backend cupy --dtype $2 --T $3 --json $W/kernels_$1_$2_$3.json > $W/kernels_$1_$2_$3.txt 2>&1
done
el kernels done
export FLA_CACHE_RESULTS=1
timeout $(left 320) $P cli.py bench --grid headline --op linear --dtype float16 --dtype bfloat16 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_dqr --backend peer --pass fwdbwd --budget 40 --json $W/bench_fla_lin.json --md $W/bench_fla_lin.md > $W/bench_fla_lin.txt 2>&1
el bench fla linear done
timeout $(left 380) $P cli.py bench --grid headline --op decayed --dtype float16 --T 65536 \
   --backend cupy:chunked_mma_dqr --backend peer --pass fwdbwd --budget 30 --json $W/bench_fla_dec.json --md $W/bench_fla_dec.md > $W/bench_fla_dec.txt 2>&1
el bench fla decayed done
timeout 40 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 15 --json $W/sm1024.json --md $W/sm1024.md > $W/sm1024.txt 2>&1
el sm1024 done
PIDS=""
timeout $(left 505) $P scripts/gpu_test_shards.py --jobs 6 --timeout $(left 495) --out $W/tests -- -k "not numba and (core_matches or beyond or dqrev_matches or launch)" \
   tests/test_cupy_chunked_mma.py tests/test_fast_launch.py > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
( $P cli.py check --op linear --op decayed --backend cupy:chunked_mma_dqr --dtype float16 --dtype bfloat16 -j 3 --time-limit $(left 495) --json $W/check.json > $W/check.txt 2> $W/check_progress.txt; el check done ) &
PIDS="$PIDS $!"
wait $PIDS
kill $TARPID
el all done
