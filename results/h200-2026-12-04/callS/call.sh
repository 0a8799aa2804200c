#!/usr/bin/env bash
# callS (2026-12-04, fourth session; tree of callR's code): #10's goals on one host -- every op's default through the
# API at T = 64 (bench --grid api, two processes) and softmax float16 T = 1024 against its kernels (three processes).
set -x
P=python3
W=/tmp/c; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/c.tgz -C /tmp c; }
( while true; do sleep 12; tar czf $OUT/c.tmp.tgz -C /tmp c 2>/dev/null && mv $OUT/c.tmp.tgz $OUT/c.tgz; done ) &
TARPID=$!
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
( time timeout 200 $P cli.py warmup --backend cupy -j 14 ) > $W/warm.txt 2>&1
el warmup done
for r in 1 2; do
  timeout 70 $P cli.py bench --grid api --budget 45 --json $W/api$r.json --md $W/api$r.md > $W/api$r.txt 2>&1
done
el api done
for r in 1 2 3; do
  timeout 30 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 12 --json $W/sm1024_$r.json --md $W/sm1024_$r.md > $W/sm1024_$r.txt 2>&1
done
el sm1024 done
kill $TARPID
el all done
