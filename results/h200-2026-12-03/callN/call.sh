#!/usr/bin/env bash
# callN: GPU verification of 2fa7be2..5df8334 (bfloat16 log decays read by the walkers; the segment sums out of the
# saved block above 4 MiB): every CuPy GPU test, check of decayed (complete) and of the linear / ZeroS variants that
# callM's limit cut, then with the GPU alone bfloat16 decayed's API overhead against decayed.md's prediction.
set -x
P=python3
W=/tmp/n; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/n.tgz -C /tmp n; }
( while true; do sleep 12; tar czf $OUT/n.tmp.tgz -C /tmp n 2>/dev/null && mv $OUT/n.tmp.tgz $OUT/n.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
( time timeout 120 $P cli.py warmup --backend cupy -j 14 ) > $W/warm.txt 2>&1
el warm done
PIDS=""
timeout $(left 420) $P scripts/gpu_test_shards.py --jobs 7 --timeout $(left 410) --times results/h200-2026-12-03/callE/tests --out $W/tests -- -k "not numba" > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
( $P cli.py check --op decayed --backend cupy -j 3 --time-limit $(left 400) --json $W/check_decayed.json > $W/check_decayed.txt 2> $W/check_decayed_progress.txt; el check decayed done ) &
PIDS="$PIDS $!"
LB=""; for v in chunked_mma_dqr chunked_mma_dqf chunked_mma_tf32 chunked_mma_dkdv8r chunked chunked_seg naive; do LB="$LB --backend cupy:$v"; done
( $P cli.py check --op linear $LB -j 2 --time-limit $(left 400) --json $W/check_linear.json > $W/check_linear.txt 2> $W/check_linear_progress.txt; el check linear done ) &
PIDS="$PIDS $!"
ZB=""; for v in chunked_mma_fused chunked_mma_fused2 chunked_mma_fused3 chunked_mma_fused4 chunked_mma_tf32 chunked chunked_seg naive; do ZB="$ZB --backend cupy:$v"; done
( $P cli.py check --op zeros $ZB -j 2 --time-limit $(left 400) --json $W/check_zeros.json > $W/check_zeros.txt 2> $W/check_zeros_progress.txt; el check zeros done ) &
PIDS="$PIDS $!"
wait $PIDS
el tests and checks done
# the GPU alone: bfloat16 decayed's host path (prediction: API overhead 151-228 -> 60-110 us; 64k API 2.82 -> 2.66-2.72 ms)
for a in "decayed bfloat16 1024" "decayed bfloat16 65536" "decayed float16 65536"; do set -- $a
  timeout 30 $P _dev/steps_probe.py $a > $W/steps-$1-$2-$3.txt 2>&1
done
el probes done
timeout $(left 540) $P cli.py bench --grid headline --op decayed --dtype bfloat16 --T 1024 --T 4096 --T 16384 --T 65536 \
   --backend cupy:chunked_mma --no-peers --pass fwdbwd --budget 40 --json $W/bench_bf16.json --md $W/bench_bf16.md > $W/bench_bf16.txt 2>&1
el bench done
kill $TARPID
el all done
