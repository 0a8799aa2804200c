#!/usr/bin/env bash
# callL: the session's last call: host10b (one run per plan) -- API overhead of linear, decayed, ZeroS (one round each, beside with 300e392's tree, main before host10b, under _dev/old) and
# the GPU tests of the host path
set -x
P=python3
W=/tmp/l; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/l.tgz -C /tmp l; }
( while true; do sleep 15; tar czf $OUT/l.tmp.tgz -C /tmp l 2>/dev/null && mv $OUT/l.tmp.tgz $OUT/l.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
API="--grid api --backend cupy:chunked_mma --backend cupy:chunked_mma_fused3 --budget 20"
for r in 1; do
  timeout 40 $P cli.py bench $API --json $W/api$r.json --md $W/api$r.md > $W/api$r.txt 2>&1
  el api $r done
  ( cd _dev/old && PYTHONPATH=$PWD:$PYTHONPATH timeout 40 $P cli.py bench $API --json $W/api_old$r.json --md $W/api_old$r.md > $W/api_old$r.txt 2>&1 )
  el api old $r done
done
timeout $(left 150) $P scripts/gpu_test_shards.py --jobs 8 --timeout $(left 142) --out $W/tests -- --durations=20 -k "api or host_path or fast_launch or registry or opspec" > $W/tests.txt 2>&1
el tests done
kill $TARPID
el all done
