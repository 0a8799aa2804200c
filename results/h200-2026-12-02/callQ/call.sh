#!/usr/bin/env bash
# callQ: every GPU test + check cupy on the final tree, in parallel; then dkdv modes at long T, decode grid
set -x
P=python3
W=/tmp/q; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/q.tgz -C /tmp q; }
( while true; do sleep 20; tar czf $OUT/q.tmp.tgz -C /tmp q 2>/dev/null && mv $OUT/q.tmp.tgz $OUT/q.tgz; done ) &
TARPID=$!
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
( time $P cli.py warmup --backend cupy -j 16 ) > $W/warm.txt 2>&1
el warm done
timeout 320 $P scripts/gpu_test_shards.py --jobs 8 --timeout 300 --out $W/tests > $W/tests.txt 2>&1 &
timeout 320 $P cli.py check --backend cupy -j 8 --json $W/check_cupy.json > $W/checkc.txt 2>&1 &
wait
el tests and check done
timeout 90 $P scripts/dkdv_modes.py --T 16384 65536 --ops linear decayed --dtypes float16 --reps 10 > $W/dkdv_modes.txt 2>&1
el dkdv modes done
timeout 50 $P cli.py bench --grid decode --json $W/decode.json --md $W/decode.md > $W/decode.txt 2>&1
el decode done
kill $TARPID
el all done
