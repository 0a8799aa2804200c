#!/usr/bin/env bash
# callT: timings of last session's unmeasured changes (nbchunk, zshost, hostb, dkdv fp32 launch bound),
# then the check of every variant whose kernels changed (cupy chunked_mma*, fa2*; numba) side by side
set -x
P=python3
W=/tmp/t; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/t.tgz -C /tmp t; }
( while true; do sleep 15; tar czf $OUT/t.tmp.tgz -C /tmp t 2>/dev/null && mv $OUT/t.tmp.tgz $OUT/t.tgz; done ) &
TARPID=$!
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt 2>&1
( time $P cli.py warmup --backend cupy -j 16 ) > $W/warm.txt 2>&1
el warm done
timeout 40 $P scripts/dkdv_modes.py --T 16384 --ops linear decayed --dtypes float32 --reps 10 > $W/dkdv_modes.txt 2>&1
el dkdv done
timeout 50 $P scripts/host_profile.py --op zeros --op softmax --op linear --dtype float16 --calls 600 --out $W/hp > $W/host_profile.txt 2>&1
el host profile done
timeout 45 $P cli.py bench --grid api --json $W/api.json --md $W/api.md > $W/api.txt 2>&1
el api done
timeout 100 $P cli.py bench --op linear --op decayed --op zeros --dtype float32 --T 4096 --D 64 --backend numba:chunked --backend cupy:chunked --no-peers --pass fwdbwd --json $W/numba.json --md $W/numba.md > $W/numba.txt 2>&1
el numba bench done
PIDS=""
timeout 250 $P cli.py check --backend cupy:chunked_mma --backend cupy:chunked_mma_tf32 --backend cupy:chunked_mma_fused --backend cupy:fa2 --backend cupy:fa2_3xtf32 -j 10 --json $W/check_cupy.json > $W/checkc.txt 2> $W/checkc_progress.txt &
PIDS="$PIDS $!"
timeout 250 $P cli.py check --backend numba -j 5 --json $W/check_numba.json > $W/checkn.txt 2> $W/checkn_progress.txt &
PIDS="$PIDS $!"
wait $PIDS
el checks done
kill $TARPID
el all done
