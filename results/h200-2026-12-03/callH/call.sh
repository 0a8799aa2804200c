#!/usr/bin/env bash
# callH: bf16dg (bfloat16 decayed on the 16-bit core, d log_decay from chunk anchors) and zs8w (ZeroS fused3)
# merged; issue #10: API overhead beside the host floor, Numba first call after warmup (file names)
set -x
P=python3
W=/tmp/h; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/h.tgz -C /tmp h; }
( while true; do sleep 15; tar czf $OUT/h.tmp.tgz -C /tmp h 2>/dev/null && mv $OUT/h.tmp.tgz $OUT/h.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
( time timeout 150 $P cli.py warmup --backend cupy -j 15 ) > $W/warm.txt 2>&1
el warm done
timeout 45 $P cli.py bench --grid api --backend cupy:fa2 --backend cupy:fa2_3xtf32 --backend cupy:chunked_mma --backend cupy:chunked_mma_fused2 --budget 40 --json $W/api1.json --md $W/api1.md > $W/api1.txt 2>&1
el api done
mkdir -p $W/fc
FPIDS=""
for op in softmax linear decayed zeros; do
  timeout 200 $P scripts/first_call.py --op $op --backend numba --after-warmup --timeout 120 --json $W/fc/numba-$op.json > $W/fc/numba-$op.txt 2>&1 &
  FPIDS="$FPIDS $!"
done
timeout 60 $P cli.py bench --op decayed --backend cupy:chunked_mma --backend cupy:chunked_mma_bf16f32 --dtype bfloat16 --T 4096 --T 16384 --T 65536 --D 64 --pass fwdbwd --no-peers --budget 50 --json $W/bench_bf16.json --md $W/bench_bf16.md > $W/bench_bf16.txt 2>&1
el bench bf16 done
timeout 50 $P cli.py bench --op decayed --op linear --backend cupy:chunked_mma --backend cupy:chunked_mma_dqf --backend cupy:chunked_mma_dqa --dtype float16 --T 16384 --T 65536 --D 64 --pass fwdbwd --no-peers --budget 40 --json $W/bench_dqa.json --md $W/bench_dqa.md > $W/bench_dqa.txt 2>&1
el bench dqa done
timeout 60 $P cli.py bench --op zeros --op linear --backend cupy:chunked_mma --backend cupy:chunked_mma_fused2 --backend cupy:chunked_mma_fused3 --dtype float16 --dtype float32 --T 4096 --T 16384 --pass fwdbwd --pass bwd --no-peers --budget 50 --json $W/bench_zeros.json --md $W/bench_zeros.md > $W/bench_zeros.txt 2>&1
el bench zeros done
timeout 50 $P scripts/tune_chunked_mma.py --zeros chunked_mma_fused2 --zeros chunked_mma_fused3 --dtype float16 --dtype float32 --T 4096 --T 16384 --L 8 --L 11 --L 15 --L 16 --json $W/zeros_L.json > $W/zeros_L.txt 2>&1
el tune zeros done
wait $FPIDS
el first calls done
PIDS=""
timeout $(left 560) $P scripts/gpu_test_shards.py --jobs 8 --timeout $(left 555) --out $W/tests -- --durations=30 -k "(anchor or bfloat16_decayed_long or dqfold or fused3 or (bfloat16 and decayed)) and not numba" > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
$P cli.py check --op decayed --backend cupy:chunked_mma --backend cupy:chunked_mma_dqa --dtype bfloat16 -j 2 --time-limit $(left 540) --json $W/check_bf16_s0.json > $W/check_bf16_s0.txt 2> $W/check_bf16_s0_progress.txt &
PIDS="$PIDS $!"
$P cli.py check --op decayed --backend cupy:chunked_mma --dtype bfloat16 --seed 1 -j 2 --time-limit $(left 540) --json $W/check_bf16_s1.json > $W/check_bf16_s1.txt 2> $W/check_bf16_s1_progress.txt &
PIDS="$PIDS $!"
$P cli.py check --op zeros --backend cupy:chunked_mma_fused3 -j 2 --time-limit $(left 540) --json $W/check_fused3.json > $W/check_fused3.txt 2> $W/check_fused3_progress.txt &
PIDS="$PIDS $!"
wait $PIDS
el tests and checks done
kill $TARPID
el all done
