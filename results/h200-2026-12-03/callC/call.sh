#!/usr/bin/env bash
# callC (fifth session of 2026-12-03, tree 2f71ad9): fla's Triton kernels compiled and autotuned (choices cached on
# disk) in four processes beside our warm-up; then with the GPU alone: the API overhead grid on the new defaults,
# softmax float16 T = 1024 (bench + probe), fla in the same process against our defaults (linear and decayed,
# float16 / bfloat16, T 1k..64k); then Numba's first calls (decayed, ZeroS) beside the GPU tests of the API and
# the tensor-core linear/decayed core.
set -x
P=python3
W=/tmp/c; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/c.tgz -C /tmp c; }
( while true; do sleep 12; tar czf $OUT/c.tmp.tgz -C /tmp c 2>/dev/null && mv $OUT/c.tmp.tgz $OUT/c.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
# phase A: fla compiles + autotuning (FLA_CACHE_RESULTS=1: the choices kept on disk for the timed process), our warm-up
FPIDS=""
for op_line in "linear float16" "linear bfloat16" "decayed float16" "decayed bfloat16"; do set -- $op_line
  FLA_CACHE_RESULTS=1 timeout 230 $P cli.py bench --grid headline --op $1 --backend peer --dtype $2 --T 1024 --budget 5 > $W/flac-$1-$2.txt 2>&1 &
  FPIDS="$FPIDS $!"
done
( time timeout 150 $P cli.py warmup --backend cupy -j 10 ) > $W/warm.txt 2>&1
el warm done
wait $FPIDS
el fla compiles done
# phase B: timed, the GPU alone
timeout 60 $P cli.py bench --grid api --backend cupy:fa2 --backend cupy:fa2_3xtf32 --backend cupy:chunked_mma_dqr --backend cupy:chunked_mma_fused3 --budget 40 --json $W/api.json --md $W/api.md > $W/api.txt 2>&1
el api done
timeout 40 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 15 --json $W/sm1024.json --md $W/sm1024.md > $W/sm1024.txt 2>&1
timeout 40 $P _dev/sm1024.py 1024 > $W/sm1024_probe.txt 2>&1
timeout 40 $P _dev/sm1024.py 64 > $W/sm64_probe.txt 2>&1
el sm1024 done
export FLA_CACHE_RESULTS=1
timeout $(left 420) $P cli.py bench --grid headline --op linear --dtype float16 --dtype bfloat16 --T 1024 --T 2048 --T 4096 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_dqr --backend peer --pass fwdbwd --budget 50 --json $W/bench_fla_lin.json --md $W/bench_fla_lin.md > $W/bench_fla_lin.txt 2>&1
el bench fla linear done
timeout $(left 480) $P cli.py bench --grid headline --op decayed --dtype float16 --dtype bfloat16 --T 1024 --T 2048 --T 4096 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_dqr --backend cupy:chunked_mma --backend peer --pass fwdbwd --budget 55 --json $W/bench_fla_dec.json --md $W/bench_fla_dec.md > $W/bench_fla_dec.txt 2>&1
el bench fla decayed done
# phase C: first calls (CPU) beside GPU tests of the API and the core
mkdir -p $W/fc
( for op in decayed zeros; do timeout $(left 560) $P scripts/first_call.py --op $op --backend numba --timeout 40 --json $W/fc/numba-$op.json > $W/fc/numba-$op.txt 2>&1; done; el first calls done ) &
FCPID=$!
timeout $(left 570) $P scripts/gpu_test_shards.py --jobs 6 --timeout $(left 560) --times results/h200-2026-12-03/callA/tests --out $W/tests -- -k "api or dqr" > $W/tests.txt 2>&1
el tests done
wait $FCPID
kill $TARPID
el all done
