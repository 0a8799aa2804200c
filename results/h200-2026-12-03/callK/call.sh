#!/usr/bin/env bash
# callK: the merged helpers of the third session (bf16ss: bfloat16 decayed anchor + split-state, the default; host10:
# less Python per call, lazy registry; zsdq: ZeroS fused4): times first (GPU alone), then GPU tests and checks
set -x
P=python3
W=/tmp/k; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/k.tgz -C /tmp k; }
( while true; do sleep 15; tar czf $OUT/k.tmp.tgz -C /tmp k 2>/dev/null && mv $OUT/k.tmp.tgz $OUT/k.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
( time timeout 130 $P cli.py warmup --backend cupy -j 15 ) > $W/warm.txt 2>&1
el warm done
timeout 75 $P cli.py bench --op decayed --dtype bfloat16 --T 4096 --T 16384 --T 65536 --D 64 --pass fwdbwd --no-peers --backend cupy:chunked_mma --backend cupy:chunked_mma_dqa --backend cupy:chunked_mma_bf16f32 --budget 60 --json $W/bench_bf16.json --md $W/bench_bf16.md > $W/bench_bf16.txt 2>&1
el bench bf16 done
timeout 75 $P cli.py bench --op zeros --op linear --backend cupy:chunked_mma --backend cupy:chunked_mma_fused3 --backend cupy:chunked_mma_fused4 --dtype float16 --dtype float32 --T 4096 --T 16384 --D 64 --pass fwdbwd --pass bwd --no-peers --budget 60 --json $W/bench_zeros.json --md $W/bench_zeros.md > $W/bench_zeros.txt 2>&1
el bench zeros done
timeout 50 $P cli.py bench --grid api --backend cupy:fa2 --backend cupy:fa2_3xtf32 --backend cupy:chunked_mma --backend cupy:chunked_mma_fused3 --budget 40 --json $W/api1.json --md $W/api1.md > $W/api1.txt 2>&1
el api done
PIDS=""
timeout $(left 565) $P scripts/gpu_test_shards.py --jobs 8 --timeout $(left 555) --out $W/tests -- --durations=30 -k "bfloat16 or fused4 or api or host_path or fast_launch or fa2 or gpu_state or anchor or strong_decay or registry or opspec" > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
( $P cli.py check --op decayed --dtype bfloat16 --backend cupy:chunked_mma --backend cupy:chunked_mma_dqa -j 2 --time-limit $(left 420) --json $W/check_bf16.json > $W/check_bf16.txt 2> $W/check_bf16_progress.txt
  el check bf16 done
  $P cli.py check --op zeros --backend cupy:chunked_mma_fused4 -j 2 --time-limit $(left 550) --json $W/check_fused4.json > $W/check_fused4.txt 2> $W/check_fused4_progress.txt
  el check fused4 done ) &
PIDS="$PIDS $!"
wait $PIDS
el tests and checks done
kill $TARPID
el all done
