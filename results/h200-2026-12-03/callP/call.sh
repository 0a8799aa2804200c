#!/usr/bin/env bash
# callP: issue #12's float32 and ZeroS rows on the current defaults.  fla's float32 linear kernels compiled and
# autotuned (choices kept on disk) beside our warm-up and the GPU tests callO's shard limit cut; then with the GPU
# alone: linear float32 (3xTF32 default cupy:chunked_mma_dqr, the TF32 rung) against fla in the same process at
# 4k/16k/64k, and ZeroS (cupy:chunked_mma_fused3) against linear's default at 4k/16k, float16 and float32.
set -x
P=python3
W=/tmp/p; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/p.tgz -C /tmp p; }
( while true; do sleep 12; tar czf $OUT/p.tmp.tgz -C /tmp p 2>/dev/null && mv $OUT/p.tmp.tgz $OUT/p.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
FLA_CACHE_RESULTS=1 timeout 230 $P cli.py bench --grid headline --op linear --backend peer --dtype float32 --T 1024 --budget 5 > $W/flac-linear-float32.txt 2>&1 &
FPID=$!
( time timeout 120 $P cli.py warmup --backend cupy -j 10 ) > $W/warm.txt 2>&1
el warm done
# the GPU tests callO's limit cut (shards s1, s2 of results/h200-2026-12-03/callO/tests), the slow T = 4097 ones last
cat _dev/rest.ids > $W/rest.ids
timeout $(left 235) $P -m pytest -q -p no:cacheprovider --junitxml=$W/rest.xml $(sed -n '1~2p' _dev/rest.ids) > $W/rest_a.txt 2>&1 &
TP1=$!
timeout $(left 235) $P -m pytest -q -p no:cacheprovider --junitxml=$W/rest_b.xml $(sed -n '2~2p' _dev/rest.ids) > $W/rest_b.txt 2>&1 &
TP2=$!
wait $FPID
el fla compiles done
wait $TP1 $TP2
el tests done
export FLA_CACHE_RESULTS=1
timeout $(left 400) $P cli.py bench --grid headline --op linear --dtype float32 --T 4096 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_dqr --backend cupy:chunked_mma_tf32 --backend peer --pass fwdbwd --budget 45 --json $W/bench_fla_f32.json --md $W/bench_fla_f32.md > $W/bench_fla_f32.txt 2>&1
el bench fla float32 done
timeout $(left 480) $P cli.py bench --grid headline --op zeros --op linear --dtype float16 --dtype float32 --T 4096 --T 16384 \
   --backend cupy:chunked_mma_fused3 --backend cupy:chunked_mma_dqr --no-peers --pass fwdbwd --budget 40 --json $W/bench_zeros.json --md $W/bench_zeros.md > $W/bench_zeros.txt 2>&1
el bench zeros done
kill $TARPID
el all done
