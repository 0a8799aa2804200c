#!/usr/bin/env bash
# callV: every GPU test, beside the check cells callU left (ZeroS fused, decayed, fa2*, linear tf32; numba ZeroS
# chunked after nbtile); then the host profile (hostpath) and the Numba chunk-core settings (nbtile)
set -x
P=python3
W=/tmp/v; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/v.tgz -C /tmp v; }
( while true; do sleep 15; tar czf $OUT/v.tmp.tgz -C /tmp v 2>/dev/null && mv $OUT/v.tmp.tgz $OUT/v.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + 385 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
( time $P cli.py warmup --backend cupy -j 16 ) > $W/warm.txt 2>&1
el warm done
PIDS=""
timeout 340 $P scripts/gpu_test_shards.py --jobs 9 --timeout 320 --out $W/tests -- --durations=40 > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
( $P cli.py check --op zeros --backend cupy:chunked_mma_fused -j 2 --time-limit 150 --json $W/check_zeros_fused.json > $W/check_zeros_fused.txt 2>&1
  $P cli.py check --op decayed --backend cupy:chunked_mma --backend cupy:chunked_mma_tf32 -j 2 --time-limit $(left) --json $W/check_decayed.json > $W/check_decayed.txt 2>&1 ) &
PIDS="$PIDS $!"
( $P cli.py check --op softmax --backend cupy:fa2 --backend cupy:fa2_3xtf32 -j 2 --time-limit 150 --json $W/check_fa2.json > $W/check_fa2.txt 2>&1
  $P cli.py check --op linear --backend cupy:chunked_mma_tf32 -j 2 --time-limit $(left) --json $W/check_linear_tf32.json > $W/check_linear_tf32.txt 2>&1 ) &
PIDS="$PIDS $!"
$P cli.py check --backend numba:chunked -j 3 --time-limit 325 --json $W/check_numba_chunked.json > $W/check_numba_chunked.txt 2>&1 &
PIDS="$PIDS $!"
wait $PIDS
el tests and checks done
timeout 60 $P scripts/host_profile.py --op linear --op decayed --op zeros --op softmax --dtype float16 --calls 600 --out $W/hp > $W/host_profile.txt 2>&1
el host profile done
timeout 90 $P scripts/numba_chunk_tiles.py --rounds 3 > $W/numba_tiles.txt 2>&1
el nbtile done
kill $TARPID
el all done
