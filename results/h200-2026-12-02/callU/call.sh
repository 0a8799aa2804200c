#!/usr/bin/env bash
# callU: the checks callT cut short, after warming both backends' caches: cupy chunked_mma* and fa2* (the
# variants whose kernels changed since the last full sweep) and every numba variant (nbchunk's chunked core)
set -x
P=python3
W=/tmp/u; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/u.tgz -C /tmp u; }
( while true; do sleep 15; tar czf $OUT/u.tmp.tgz -C /tmp u 2>/dev/null && mv $OUT/u.tmp.tgz $OUT/u.tgz; done ) &
TARPID=$!
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
( time timeout 130 $P cli.py warmup -j 16 ) > $W/warm.txt 2>&1
el warm done
PIDS=""
$P cli.py check --backend cupy:chunked_mma --backend cupy:chunked_mma_tf32 --backend cupy:chunked_mma_fused --backend cupy:fa2 --backend cupy:fa2_3xtf32 -j 8 --time-limit 290 --json $W/check_cupy.json > $W/checkc.txt 2> $W/checkc_progress.txt &
PIDS="$PIDS $!"
$P cli.py check --backend numba -j 8 --time-limit 290 --json $W/check_numba.json > $W/checkn.txt 2> $W/checkn_progress.txt &
PIDS="$PIDS $!"
wait $PIDS
el checks done
kill $TARPID
el all done
