#!/usr/bin/env bash
# callQ: the rest of the CuPy check sweep on the current tree: linear's chunked_mma / _db / _dkdv2 / _dkdv8 (callM
# ran 168 of their 360 cells each before its limit) and ZeroS's cupy:chunked_mma (96 of 324).
set -x
P=python3
W=/tmp/q; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/q.tgz -C /tmp q; }
( while true; do sleep 10; tar czf $OUT/q.tmp.tgz -C /tmp q 2>/dev/null && mv $OUT/q.tmp.tgz $OUT/q.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
( time timeout 90 $P cli.py warmup --op linear --op zeros --backend cupy -j 14 ) > $W/warm.txt 2>&1
el warm done
( $P cli.py check --op linear --backend cupy:chunked_mma --backend cupy:chunked_mma_db --backend cupy:chunked_mma_dkdv2 --backend cupy:chunked_mma_dkdv8 -j 9 --time-limit $(left 225) --json $W/check_linear.json > $W/check_linear.txt 2> $W/check_linear_progress.txt; el check linear done ) &
P1=$!
( $P cli.py check --op zeros --backend cupy:chunked_mma -j 4 --time-limit $(left 225) --json $W/check_zeros.json > $W/check_zeros.txt 2> $W/check_zeros_progress.txt; el check zeros done ) &
P2=$!
wait $P1 $P2
kill $TARPID
el all done
