#!/usr/bin/env bash
# callZ: zsbhost (ZeroS fused backward as a plan) merged: the CuPy GPU tests beside the fused ZeroS checks (and the
# TOL_DG cases of the dq fold); then the ZeroS host path of main before the merge (_dev/old) and after, alternately,
# host_profile and bench --grid api
set -x
P=python3
W=/tmp/z; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/z.tgz -C /tmp z; }
( while true; do sleep 15; tar czf $OUT/z.tmp.tgz -C /tmp z 2>/dev/null && mv $OUT/z.tmp.tgz $OUT/z.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE); old: $(cat _dev/OLD) under _dev/old" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
NEW=$PWD; OLD=$PWD/_dev/old; PP=$PYTHONPATH
old() { ( cd $OLD && PYTHONPATH=$OLD:$PP "$@" ); }
mkdir -p $W/fc
timeout 190 $P scripts/first_call.py --op zeros --backend cupy --after-warmup --timeout 120 --json $W/fc/cupy-zeros.json > $W/fc/cupy-zeros.txt 2>&1 &
FC1=$!
( time timeout 100 $P cli.py warmup --backend cupy --op zeros --op linear --op decayed -j 12 ) > $W/warm.txt 2>&1
el warm done
PIDS=""
timeout $(left 200) $P scripts/gpu_test_shards.py --jobs 8 --timeout $(left 195) --out $W/tests -- --durations=30 -k "(zeros or dqfold or host_path or fast_launch or api) and not numba" > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
$P cli.py check --op zeros --backend cupy:chunked_mma_fused2 --backend cupy:chunked_mma_fused -j 3 --time-limit $(left 185) --json $W/check_zeros.json > $W/check_zeros.txt 2> $W/check_zeros_progress.txt &
PIDS="$PIDS $!"
wait $PIDS
el tests and checks done
wait $FC1
el first calls done
for r in 1 2; do
  old timeout 20 $P scripts/host_profile.py --op zeros --op linear --dtype float16 --calls 600 --out $W/hp_old$r > $W/host_profile_old$r.txt 2>&1
  timeout 20 $P scripts/host_profile.py --op zeros --op linear --dtype float16 --calls 600 --out $W/hp_new$r > $W/host_profile_new$r.txt 2>&1
done
el host A/B done
for r in 1 2; do
  old timeout 30 $P cli.py bench --grid api --op zeros --dtype float16 --dtype float32 --backend cupy:chunked_mma_fused2 --backend cupy:chunked_mma_fused --budget 20 --json $W/api_old$r.json > $W/api_old$r.txt 2>&1
  timeout 30 $P cli.py bench --grid api --op zeros --dtype float16 --dtype float32 --backend cupy:chunked_mma_fused2 --backend cupy:chunked_mma_fused --budget 20 --json $W/api_new$r.json > $W/api_new$r.txt 2>&1
done
el api A/B done
kill $TARPID
el all done
