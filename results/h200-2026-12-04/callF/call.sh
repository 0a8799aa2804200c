#!/usr/bin/env bash
# callF (2026-12-04): the backward walkers on wgmma (tg_bwd_dq, tg_bwd_dkdv; cupy:chunked_mma_wgb) -- GPU tests beside
# fla's compiles and our warm-up; then, with the GPU alone, the per-kernel splits (tg_bwd_dkdv with and without
# LOWREG), fwd+bwd of chunked_mma_wgb and chunked_mma_wg against fla in the same process, and the check sweep.
set -x
P=python3
W=/tmp/c; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/c.tgz -C /tmp c; }
( while true; do sleep 12; tar czf $OUT/c.tmp.tgz -C /tmp c 2>/dev/null && mv $OUT/c.tmp.tgz $OUT/c.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
FPIDS=""
for dt in float16 bfloat16; do
  FLA_CACHE_RESULTS=1 timeout 200 $P cli.py bench --grid headline --op linear --backend peer --dtype $dt --T 1024 --budget 5 > $W/flac-$dt.txt 2>&1 &
  FPIDS="$FPIDS $!"
done
( time timeout 150 $P cli.py warmup --op linear --backend cupy -j 8 ) > $W/warm.txt 2>&1 &
FPIDS="$FPIDS $!"
timeout 170 $P scripts/gpu_test_shards.py --jobs 4 --timeout 160 --out $W/tests -- -k "not numba and (wgb or launches or test_gpu_api)" \
   tests/test_cupy_chunked_mma.py tests/test_gpu_api.py > $W/tests.txt 2>&1
el tests done
wait $FPIDS
el fla compiles and warm-up done
for c in "float16 65536" "bfloat16 65536" "float16 16384"; do set -- $c
  timeout 40 $P cli.py kernels --op linear --backend cupy:chunked_mma_wgb --backend cupy:chunked_mma_wg --dtype $1 --T $2 --json $W/kernels_$1_$2.json > $W/kernels_$1_$2.txt 2>&1
done
timeout 40 $P _dev/wg_split.py WG_DKDV_LOWREG=0 -- kernels --op linear --backend cupy:chunked_mma_wgb --dtype float16 --T 65536 --json $W/kernels_lowreg0.json > $W/kernels_lowreg0.txt 2>&1
timeout 40 $P _dev/wg_split.py WG_DQ_STAGES=3 WG_DKDV_STAGES=3 -- kernels --op linear --backend cupy:chunked_mma_wgb --dtype float16 --T 65536 --json $W/kernels_stages3.json > $W/kernels_stages3.txt 2>&1
el kernels done
export FLA_CACHE_RESULTS=1
timeout $(left 420) $P cli.py bench --grid headline --op linear --dtype float16 --dtype bfloat16 --T 4096 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_wgb --backend cupy:chunked_mma_wg --backend peer --pass fwdbwd --budget 40 --json $W/bench_fla_lin.json --md $W/bench_fla_lin.md > $W/bench_fla_lin.txt 2>&1
el bench done
( $P cli.py check --op linear --backend cupy:chunked_mma_wgb --dtype float16 --dtype bfloat16 -j 3 --time-limit $(left 500) --json $W/check.json > $W/check.txt 2> $W/check_progress.txt; el check done )
kill $TARPID
el all done
