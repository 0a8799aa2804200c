#!/usr/bin/env bash
# callJ: the first call of the third session of 2026-12-03: every GPU test (pytest -m gpu, shards) on 766f414's
# weight fix, check of the CuPy decayed / linear / ZeroS variants, and a profile of Numba's warm-cache first call
set -x
P=python3
W=/tmp/j; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/j.tgz -C /tmp j; }
( while true; do sleep 15; tar czf $OUT/j.tmp.tgz -C /tmp j 2>/dev/null && mv $OUT/j.tmp.tgz $OUT/j.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
( time timeout 120 $P cli.py warmup --backend cupy -j 15 ) > $W/warm.txt 2>&1
el warm done
PIDS=""
timeout $(left 520) $P scripts/gpu_test_shards.py --jobs 8 --timeout $(left 505) --out $W/tests -- --durations=30 > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
( for op_t in decayed:300 linear:400 zeros:470; do op=${op_t%:*}; t=${op_t#*:}
    $P cli.py check --op $op --backend cupy -j 2 --time-limit $(left $t) --json $W/check_$op.json > $W/check_$op.txt 2> $W/check_${op}_progress.txt
    el check $op done
  done ) &
PIDS="$PIDS $!"
( sleep 60; timeout $(left 400) $P _dev/prof_numba.py $W/prof linear zeros > $W/prof.txt 2>&1 ) &
PIDS="$PIDS $!"
wait $PIDS
el tests and checks done
kill $TARPID
el all done
