#!/usr/bin/env bash
# callD: where the host time of one synced call goes at long T (softmax float16 T = 1024 spends ~94 us on the host
# against ~30 at T = 64 with the same Python; decayed bfloat16's API overhead is ~150 us): steps_probe per op.
set -x
P=python3
W=/tmp/d; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/d.tgz -C /tmp d; }
( while true; do sleep 10; tar czf $OUT/d.tmp.tgz -C /tmp d 2>/dev/null && mv $OUT/d.tmp.tgz $OUT/d.tgz; done ) &
TARPID=$!
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
( time timeout 120 $P cli.py warmup --backend cupy --op softmax --op linear --op decayed -j 14 ) > $W/warm.txt 2>&1
el warm done
for a in "softmax float16 1024 fa2" "softmax float16 64 fa2" "linear float16 4096" "decayed bfloat16 1024" "decayed float16 1024" "softmax float16 4096 fa2"; do
  set -- $a
  timeout 40 $P _dev/steps_probe.py $a > $W/steps-$1-$2-$3.txt 2>&1
  el probe $a done
done
timeout 40 $P _dev/alloc_probe.py > $W/alloc_probe.txt 2>&1
el alloc probe done
kill $TARPID
el all done
