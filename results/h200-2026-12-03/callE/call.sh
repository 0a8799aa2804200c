#!/usr/bin/env bash
# callE: the merged allocations (the chunk core's saved arrays and backward temporaries in one block each at any
# size; above 4 MiB, o and small side outputs such as softmax's lse in one) -- the CuPy GPU tests and check of the
# default linear/decayed variant, then with the GPU alone the host path of the old tree (_dev/old, HEAD before the
# change) against this one, alternately, and the API against the kernels at T = 1k..16k.
set -x
P=python3
W=/tmp/e; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/e.tgz -C /tmp e; }
( while true; do sleep 12; tar czf $OUT/e.tmp.tgz -C /tmp e 2>/dev/null && mv $OUT/e.tmp.tgz $OUT/e.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
( time timeout 120 $P cli.py warmup --backend cupy -j 14 ) > $W/warm.txt 2>&1
el warm done
PIDS=""
timeout $(left 300) $P scripts/gpu_test_shards.py --jobs 8 --timeout $(left 290) --times results/h200-2026-12-03/callA/tests --out $W/tests -- -k "not numba" > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
( $P cli.py check --op linear --op decayed --backend cupy:chunked_mma_dqr -j 2 --time-limit $(left 285) --json $W/check.json > $W/check.txt 2> $W/check_progress.txt; el check done ) &
PIDS="$PIDS $!"
wait $PIDS
el tests and checks done
# timed, the GPU alone: old and new host paths alternately (the same probe, the old tree first on the path)
for r in 1 2; do
  for tree in old new; do
    for a in "softmax float16 1024 fa2" "decayed float16 1024" "linear float16 4096"; do set -- $a
      if [ $tree = old ]; then TREE=_dev/old timeout 40 $P _dev/steps_probe.py $a > $W/steps-$tree$r-$1-$2-$3.txt 2>&1
      else timeout 40 $P _dev/steps_probe.py $a > $W/steps-$tree$r-$1-$2-$3.txt 2>&1; fi
    done
  done
done
el probes done
timeout 40 $P cli.py bench --grid headline --op softmax --backend cupy:fa2 --dtype float16 --T 1024 --no-peers --budget 15 --json $W/sm1024.json --md $W/sm1024.md > $W/sm1024.txt 2>&1
timeout 40 $P _dev/sm1024.py 1024 > $W/sm1024_probe.txt 2>&1
el sm1024 done
timeout $(left 470) $P cli.py bench --grid headline --op linear --op decayed --dtype float16 --T 1024 --T 4096 --T 16384 \
   --backend cupy:chunked_mma_dqr --no-peers --pass fwdbwd --budget 40 --json $W/bench_api_long.json --md $W/bench_api_long.md > $W/bench_api_long.txt 2>&1
el api long done
kill $TARPID
el all done
