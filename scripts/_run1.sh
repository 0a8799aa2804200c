#!/usr/bin/env bash
# device run 1 (not committed): tensor-core core, first contact
set -u
cd "$(dirname "$0")/.."
W=$OUT/w; mkdir -p $W
export PYTHONUNBUFFERED=1
t0=$SECONDS
timeout 150 python3 scripts/_warm.py 2>&1 | tee $W/warm.txt
echo "warm done at $((SECONDS-t0))s"
timeout 200 python3 -m pytest -q -p no:cacheprovider --tb=line -rf tests/test_cupy_chunked_mma.py > $W/tc_test.txt 2>&1
echo "pytest rc=$? at $((SECONDS-t0))s"; tail -n 5 $W/tc_test.txt
grep -E "^FAILED|Error" $W/tc_test.txt | head -40
timeout 120 python3 cli.py check --op linear --op decayed --backend cupy:chunked_mma --backend cupy:chunked_mma_tf32 -j 8 --quick --json $W/check_tc.json > $W/check_tc.txt 2>&1
echo "check rc=$? at $((SECONDS-t0))s"; tail -n 25 $W/check_tc.txt
timeout 110 python3 cli.py bench --grid headline --op linear --op decayed --backend cupy:chunked_mma --backend cupy:chunked --dtype float16 --dtype float32 --T 16384 --T 65536 --no-peers --json $W/bench_tc.json --short > $W/bench_tc.txt 2>&1
echo "bench rc=$? at $((SECONDS-t0))s"; tail -n 30 $W/bench_tc.txt
tar czf $OUT/run1.tgz -C $W .
