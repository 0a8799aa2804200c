#!/usr/bin/env bash
# callB: revq's variant (the backward's reverse segment sums formed in the dq walker) against cupy:chunked_mma, fla in
# the same process (linear float16/bfloat16, decayed bfloat16/float16 against fla-gla-gamma, T 1k..64k), the ZeroS
# float32 host-time profile, first calls of every op and backend; GPU tests and check of the new variant.
set -x
P=python3
NEW=${NEW:-cupy:chunked_mma_dqr}
W=/tmp/b; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/b.tgz -C /tmp b; }
( while true; do sleep 15; tar czf $OUT/b.tmp.tgz -C /tmp b 2>/dev/null && mv $OUT/b.tmp.tgz $OUT/b.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
# phase A: compiles (fla's Triton kernels per dtype family, results not cached; our kernels), in parallel
for op_line in "decayed peer:fla-gla-gamma bfloat16" "decayed peer:fla-gla-gamma float16"; do set -- $op_line
  FLA_CACHE_RESULTS=0 timeout 200 $P cli.py bench --grid headline --op $1 --backend $2 --dtype $3 --T 1024 > $W/flac-$1-$3.txt 2>&1 &
done
( time timeout 150 $P cli.py warmup --backend cupy -j 12 ) > $W/warm.txt 2>&1
el warm done
timeout 30 $P scripts/host_profile.py --op zeros --dtype float32 --dtype float16 --out $W/hprof > $W/hprof.txt 2>&1
el host profile done
timeout 40 $P _dev/zs_probe.py > $W/zs_probe.txt 2>&1
timeout 40 $P _dev/sm1024.py 1024 > $W/sm1024_probe.txt 2>&1
el sm1024 probe done
# phase B: the new variant alone on the GPU (fla compiles may still run on the CPU)
timeout 100 $P cli.py bench --op linear --op decayed --dtype float16 --dtype bfloat16 --dtype float32 --T 4096 --T 16384 --T 65536 --D 64 \
   --pass fwdbwd --pass bwd --no-peers --backend cupy:chunked_mma --backend $NEW --backend cupy:chunked_mma_bf16f32 --budget 90 \
   --json $W/bench_new.json --md $W/bench_new.md > $W/bench_new.txt 2>&1
el bench new done
wait_fla() { for j in $(jobs -p); do [ "$j" = "$TARPID" ] || wait $j; done; }
wait_fla
el fla compiles done
# phase C: fla in the same process, every T of the goal; first calls on the CPU beside it
mkdir -p $W/fc
( timeout $(left 320) $P scripts/first_call.py --timeout 60 --json $W/fc/first_call.json > $W/fc/first_call.txt 2>&1; el first calls done ) &
FCPID=$!
timeout $(left 320) $P cli.py bench --grid headline --op decayed --dtype bfloat16 --dtype float16 --T 1024 --T 2048 --T 4096 --T 16384 --T 65536 \
   --backend cupy:chunked_mma --backend peer --budget 150 --json $W/bench_fla_dec.json --md $W/bench_fla_dec.md > $W/bench_fla_dec.txt 2>&1
el bench fla decayed done
el bench fla done
wait $FCPID
# phase D: correctness of the new variant
PIDS=""
timeout $(left 480) $P scripts/gpu_test_shards.py --jobs 8 --timeout $(left 470) --times results/h200-2026-12-03/callA/tests --out $W/tests -- -k "${TESTK:-dqr}" > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
( $P cli.py check --op linear --op decayed --backend $NEW -j 4 --time-limit $(left 470) --json $W/check_new.json > $W/check_new.txt 2> $W/check_new_progress.txt; el check done ) &
PIDS="$PIDS $!"
wait $PIDS
el tests and checks done
kill $TARPID
el all done
