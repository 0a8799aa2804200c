#!/usr/bin/env bash
# callD (2026-12-04): wgmma on the hardware -- tests/test_wgmma.py (wgmma.cuh against NumPy: the emulator's model
# checked against the GPU), the segment-state pass on wgmma (chunked_mma_wg) against the recurrence, its time
# against tc_seg_state, fwd+bwd against chunked_mma_dqr, the check sweep of chunked_mma_wg.
set -x
P=python3
W=/tmp/c; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/c.tgz -C /tmp c; }
( while true; do sleep 12; tar czf $OUT/c.tmp.tgz -C /tmp c 2>/dev/null && mv $OUT/c.tmp.tgz $OUT/c.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
timeout 120 $P -m pytest -q -m gpu tests/test_wgmma.py -p no:cacheprovider > $W/test_wgmma.txt 2>&1
el wgmma tests done
timeout 100 $P _dev/seg_probe.py 16384 65536 > $W/seg_probe.txt 2>&1
el seg probe done
( timeout 120 $P cli.py warmup --op linear --backend cupy -j 12 ) > $W/warm.txt 2>&1
el warm done
for c in "float16 65536" "bfloat16 65536" "float16 16384"; do set -- $c
  timeout 40 $P cli.py kernels --op linear --backend cupy:chunked_mma_wg --backend cupy:chunked_mma_dqr --dtype $1 --T $2 --json $W/kernels_$1_$2.json > $W/kernels_$1_$2.txt 2>&1
done
el kernels done
timeout 150 $P cli.py bench --grid headline --op linear --dtype float16 --dtype bfloat16 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_wg --backend cupy:chunked_mma_dqr --no-peers --pass fwdbwd --budget 30 --json $W/bench_wg.json --md $W/bench_wg.md > $W/bench_wg.txt 2>&1
el bench done
PIDS=""
timeout $(left 500) $P scripts/gpu_test_shards.py --jobs 6 --timeout $(left 490) --out $W/tests -- -k "not numba and (wg_seg_state or core_above)" \
   tests/test_cupy_chunked_mma.py > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
( $P cli.py check --op linear --backend cupy:chunked_mma_wg --dtype float16 --dtype bfloat16 -j 3 --time-limit $(left 490) --json $W/check.json > $W/check.txt 2> $W/check_progress.txt; el check done ) &
PIDS="$PIDS $!"
wait $PIDS
kill $TARPID
el all done
