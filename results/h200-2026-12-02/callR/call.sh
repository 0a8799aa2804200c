#!/usr/bin/env bash
# callR: dkdv modes at long T alone; then check cupy || the GPU tests callQ's shards 4-6 did not finish
set -x
P=python3
W=/tmp/r; mkdir -p $W/tests
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/r.tgz -C /tmp r; }
( while true; do sleep 15; tar czf $OUT/r.tmp.tgz -C /tmp r 2>/dev/null && mv $OUT/r.tmp.tgz $OUT/r.tgz; done ) &
TARPID=$!
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
( time $P cli.py warmup --backend cupy -j 16 ) > $W/warm.txt 2>&1
el warm done
timeout 90 $P scripts/dkdv_modes.py --T 16384 65536 --ops linear decayed --dtypes float16 --reps 10 > $W/dkdv_modes.txt 2>&1
el dkdv modes done
PIDS=""
timeout 370 $P cli.py check --backend cupy -j 8 --json $W/check_cupy.json > $W/checkc.txt 2>&1 &
PIDS="$PIDS $!"
for i in 0 1 2 3 4 5; do
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_CACHE_DIR=$(mktemp -d) timeout 370 $P -m pytest -m gpu -q -rfE --tb=short -p no:cacheprovider $(cat _dev/rest/r$i.ids) > $W/tests/r$i.txt 2>&1 &
  PIDS="$PIDS $!"
done
wait $PIDS
el tests and check done
kill $TARPID
el all done
