#!/usr/bin/env bash
# callS: check of the variants changed since the last full sweep (alone); host time of decayed fp16; decode grid
set -x
P=python3
W=/tmp/s; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/s.tgz -C /tmp s; }
( while true; do sleep 15; tar czf $OUT/s.tmp.tgz -C /tmp s 2>/dev/null && mv $OUT/s.tmp.tgz $OUT/s.tgz; done ) &
TARPID=$!
echo "tree: $(cat _dev/TREE) + check progress lines" > $W/commit.txt
( time $P cli.py warmup --backend cupy -j 16 ) > $W/warm.txt 2>&1
el warm done
timeout 230 $P cli.py check --backend cupy:chunked_mma --backend cupy:chunked_mma_tf32 --backend cupy:chunked_mma_fused -j 16 --json $W/check_cupy.json > $W/checkc.txt 2> $W/checkc_progress.txt
el check done
timeout 45 $P scripts/host_profile.py --op decayed --op linear --dtype float16 --dtype float32 --calls 600 --out $W/hp > $W/host_profile.txt 2>&1
el host profile done
timeout 50 $P cli.py bench --grid decode --json $W/decode.json --md $W/decode.md > $W/decode.txt 2>&1
el decode done
kill $TARPID
el all done
