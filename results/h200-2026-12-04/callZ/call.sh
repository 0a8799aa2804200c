#!/usr/bin/env bash
# callZ (2026-12-04, fifth session): the pairs walkers' two open choices -- tg_bwd_dkdv's LOWREG (dv stored before
# dk's products, or one wait fewer) and tg_seg_state's load stages (2, 3) -- measured against each other in one process
# (_dev/ab_pairs.py: fwd+bwd through the core, conversions included, interleaved rounds), then `_wgp` (the defaults)
# against fla in the same run at 16k / 64k.
set -x
P=python3
W=/tmp/z; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/z.tgz -C /tmp z; }
( while true; do sleep 12; tar czf $OUT/z.tmp.tgz -C /tmp z 2>/dev/null && mv $OUT/z.tmp.tgz $OUT/z.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
FPIDS=""
for op in linear; do
  FLA_CACHE_RESULTS=1 timeout 230 $P cli.py bench --grid headline --op $op --backend peer --dtype float32 --T 1024 --budget 5 > $W/flac-$op.txt 2>&1 &
  FPIDS="$FPIDS $!"
done
( time timeout 150 $P cli.py warmup --op linear --backend cupy -j 10 ) > $W/warm.txt 2>&1
el warmup done
timeout 150 $P _dev/ab_pairs.py $W/ab_pairs.json > $W/ab_pairs.txt 2>&1
el ab done
wait $FPIDS
el fla done
export FLA_CACHE_RESULTS=1
timeout $(left 500) $P cli.py bench --grid headline --op linear --dtype float32 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_wgp --backend peer --pass fwdbwd --budget 40 --json $W/bench_lin32.json --md $W/bench_lin32.md > $W/bench_lin32.txt 2>&1
el bench linear done
kill $TARPID
el all done
