#!/usr/bin/env bash
# callO: (1) the GPU tests callN's shard limit cut (test_cupy_zeros_mma, test_fast_launch, test_gpu_state,
# test_steps_kernel) and the new dk/dv mode's (dqrev_roles: cupy:chunked_mma_dqr8r); check of linear's variants that
# callM/callN left unfinished and of the new rung; (2) with the GPU alone: every kernel's GPU time in one fwd+bwd at
# 16k/64k (CUDA events around each launch) for the dk/dv rungs, and fwd+bwd of dqr against dqr8r.
set -x
P=python3
W=/tmp/o; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/o.tgz -C /tmp o; }
( while true; do sleep 12; tar czf $OUT/o.tmp.tgz -C /tmp o 2>/dev/null && mv $OUT/o.tmp.tgz $OUT/o.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
( time timeout 120 $P cli.py warmup --backend cupy -j 14 ) > $W/warm.txt 2>&1
el warm done
PIDS=""
timeout $(left 300) $P scripts/gpu_test_shards.py --jobs 5 --timeout $(left 290) --out $W/tests -- -k "not numba" \
   tests/test_cupy_zeros_mma.py tests/test_fast_launch.py tests/test_gpu_state.py tests/test_steps_kernel.py \
   "tests/test_cupy_chunked_mma.py::test_dkdv_modes_match_recurrence" > $W/tests.txt 2>&1 &
PIDS="$PIDS $!"
LB=""; for v in chunked_mma_dqr8r chunked_mma_dqr chunked_mma_dqf chunked_mma_tf32 chunked_mma_dkdv8r chunked chunked_seg naive; do LB="$LB --backend cupy:$v"; done
( $P cli.py check --op linear $LB -j 5 --time-limit $(left 285) --json $W/check_linear.json > $W/check_linear.txt 2> $W/check_linear_progress.txt; el check linear done ) &
PIDS="$PIDS $!"
( $P cli.py check --op decayed --backend cupy:chunked_mma_dqr8r -j 2 --time-limit $(left 285) --json $W/check_decayed.json > $W/check_decayed.txt 2> $W/check_decayed_progress.txt; el check decayed done ) &
PIDS="$PIDS $!"
wait $PIDS
el tests and checks done
# the GPU alone
R="chunked_mma_dqr chunked_mma_dqr8r chunked_mma chunked_mma_dkdv8r chunked_mma_dkdv8 chunked_mma_dkdv2 chunked_mma_dqf chunked_mma_db"
for T in 65536 16384; do
  timeout 60 $P _dev/split_probe.py linear float16 $T $R > $W/split-linear-float16-$T.jsonl 2> $W/split-linear-float16-$T.err
done
timeout 40 $P _dev/split_probe.py decayed float16 65536 chunked_mma_dqr chunked_mma_dqr8r chunked_mma chunked_mma_dkdv8r > $W/split-decayed-float16-65536.jsonl 2> $W/split-decayed-float16-65536.err
timeout 30 $P _dev/split_probe.py decayed bfloat16 65536 chunked_mma chunked_mma_dqr chunked_mma_dqr8r > $W/split-decayed-bfloat16-65536.jsonl 2> $W/split-decayed-bfloat16-65536.err
timeout 30 $P _dev/split_probe.py linear bfloat16 65536 chunked_mma_dqr chunked_mma_dqr8r > $W/split-linear-bfloat16-65536.jsonl 2> $W/split-linear-bfloat16-65536.err
el split done
timeout $(left 560) $P cli.py bench --grid headline --op linear --op decayed --dtype float16 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_dqr --backend cupy:chunked_mma_dqr8r --no-peers --pass fwdbwd --budget 40 --json $W/bench_dqr8r.json --md $W/bench_dqr8r.md > $W/bench_dqr8r.txt 2>&1
el bench done
kill $TARPID
el all done
