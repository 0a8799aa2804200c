#!/usr/bin/env bash
# callW: issue #10's measures on main a12571d: first call per op and backend (cold, warm cache), the API
# overhead of the default variants (bench --grid api), softmax fp16 T=1024 through the API against its kernels
set -x
P=python3
W=/tmp/w; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/w.tgz -C /tmp w; }
( while true; do sleep 15; tar czf $OUT/w.tmp.tgz -C /tmp w 2>/dev/null && mv $OUT/w.tmp.tgz $OUT/w.tgz; done ) &
TARPID=$!
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
mkdir -p $W/fc
FPIDS=""
for b in cupy numba; do for op in softmax linear decayed zeros; do
  timeout 220 $P scripts/first_call.py --op $op --backend $b --timeout 200 --json $W/fc/$b-$op.json > $W/fc/$b-$op.txt 2>&1 &
  FPIDS="$FPIDS $!"
done; done
( time timeout 150 $P cli.py warmup --backend cupy -j 8 ) > $W/warm.txt 2>&1
el warm done
wait $FPIDS
el first calls done
timeout 170 $P cli.py bench --grid api --backend cupy:fa2 --backend cupy:fa2_3xtf32 --backend cupy:chunked_mma --backend cupy:chunked_mma_fused --budget 140 --json $W/api.json --md $W/api.md > $W/api.txt 2>&1
el api done
timeout 90 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 60 --json $W/sm1024.json --md $W/sm1024.md > $W/sm1024.txt 2>&1
el sm1024 done
kill $TARPID
el all done
