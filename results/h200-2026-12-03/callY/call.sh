#!/usr/bin/env bash
# callY: zsbwd (cupy:chunked_mma_fused2) merged: the CuPy GPU tests beside its checks and the TF32 d log_decay
# question of callX; fused2 against fused and linear; the host path A/B: callW's tree (a12571d, _dev/old) and this
# one alternately, host_profile and bench --grid api
set -x
P=python3
W=/tmp/y; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/y.tgz -C /tmp y; }
( while true; do sleep 15; tar czf $OUT/y.tmp.tgz -C /tmp y 2>/dev/null && mv $OUT/y.tmp.tgz $OUT/y.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE); old: a12571d (callW's tree) under _dev/old" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
NEW=$PWD; OLD=$PWD/_dev/old; PP=$PYTHONPATH
old() { ( cd $OLD && PYTHONPATH=$OLD:$PP "$@" ); }
old timeout 100 $P scripts/host_profile.py --dtype float16 --calls 20 --out $W/hp_old_compile > $W/old_compile.txt 2>&1 &
OPID=$!
( time timeout 100 $P cli.py warmup --backend cupy -j 14 ) > $W/warm.txt 2>&1
wait $OPID
el warm done
PIDS=""
timeout $(left 270) $P scripts/gpu_test_shards.py --jobs 8 --timeout $(left 265) --out $W/tests -- --durations=30 -k "not numba" > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
$P cli.py check --op zeros --backend cupy:chunked_mma_fused2 -j 3 --time-limit $(left 255) --json $W/check_fused2.json > $W/check_fused2.txt 2> $W/check_fused2_progress.txt &
PIDS="$PIDS $!"
timeout $(left 260) $P _dev/tf32_dg.py > $W/tf32_dg.txt 2>&1 &
PIDS="$PIDS $!"
wait $PIDS
el tests and checks done
timeout 70 $P cli.py bench --op zeros --op linear --backend cupy:chunked_mma --backend cupy:chunked_mma_fused --backend cupy:chunked_mma_fused2 --dtype float16 --dtype float32 --T 4096 --T 16384 --pass fwdbwd --pass bwd --no-peers --full --budget 50 --json $W/bench_fused2.json > $W/bench_fused2.txt 2>&1
el bench fused2 done
for r in 1 2; do
  old timeout 30 $P scripts/host_profile.py --dtype float16 --calls 600 --out $W/hp_old$r > $W/host_profile_old$r.txt 2>&1
  timeout 30 $P scripts/host_profile.py --dtype float16 --calls 600 --out $W/hp_new$r > $W/host_profile_new$r.txt 2>&1
done
el host A/B done
old timeout 40 $P cli.py bench --grid api --dtype float16 --backend cupy:fa2 --backend cupy:chunked_mma --backend cupy:chunked_mma_fused --budget 25 --json $W/api_old.json > $W/api_old.txt 2>&1
timeout 45 $P cli.py bench --grid api --dtype float16 --backend cupy:fa2 --backend cupy:chunked_mma --backend cupy:chunked_mma_fused --backend cupy:chunked_mma_fused2 --budget 30 --json $W/api_new.json > $W/api_new.txt 2>&1
el api A/B done
kill $TARPID
el all done
