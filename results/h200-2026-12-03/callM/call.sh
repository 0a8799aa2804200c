#!/usr/bin/env bash
# callM: the check sweep of the CuPy backend on the tenth host pass's tree (every op; the chunk core's and the
# outputs' allocation changed), after two probes of decayed's host path at 64k (bfloat16's API overhead, callC).
set -x
P=python3
W=/tmp/m; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/m.tgz -C /tmp m; }
( while true; do sleep 12; tar czf $OUT/m.tmp.tgz -C /tmp m 2>/dev/null && mv $OUT/m.tmp.tgz $OUT/m.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
( time timeout 120 $P cli.py warmup --backend cupy -j 14 ) > $W/warm.txt 2>&1
el warm done
for a in "decayed bfloat16 65536" "decayed float16 65536"; do set -- $a
  timeout 30 $P _dev/steps_probe.py $a > $W/steps-$1-$2-$3.txt 2>&1
done
el probes done
for op in linear decayed zeros softmax; do
  ( $P cli.py check --op $op --backend cupy -j 3 --time-limit $(left 370) --json $W/check_$op.json > $W/check_$op.txt 2> $W/check_${op}_progress.txt; el check $op done ) &
done
wait $(jobs -p | grep -v "^$TARPID$")
kill $TARPID
el all done
