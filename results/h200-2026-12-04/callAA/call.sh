#!/usr/bin/env bash
# callAA (2026-12-04, fifth session; the last of the session's device time): cupy:chunked_mma_wgp for decayed (the pairs
# walkers with log decays, tg_seg_state's pairs with decays) -- its GPU tests and check cells, then decayed float32 at
# 16k / 64k against fla-gla-gamma in the same run.  Short: the session had ~5 minutes of device time left.
set -x
P=python3
W=/tmp/aa; mkdir -p $W
T0=$(date +%s); el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a $W/timeline.txt; tar czf $OUT/aa.tgz -C /tmp aa; }
( while true; do sleep 8; tar czf $OUT/aa.tmp.tgz -C /tmp aa 2>/dev/null && mv $OUT/aa.tmp.tgz $OUT/aa.tgz; done ) &
TARPID=$!
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
echo "tree: $(cat _dev/TREE)" > $W/commit.txt
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > $W/gpu.txt
FLA_CACHE_RESULTS=1 timeout 150 $P cli.py bench --grid headline --op decayed --backend peer --dtype float32 --T 1024 --budget 3 > $W/flac-decayed.txt 2>&1 &
FPID=$!
( time timeout 100 $P -c "
from kernels.cupy import _chunked_mma as m, _xscale, _module
for e in m.WG_GROUPS['xpair']: _module.get_kernel(m.WG_SOURCE, e, group=m.WG_GROUPS['xpair'])
for e in _xscale.GROUP: _module.get_kernel(_xscale.SOURCE, e)
" ) > $W/warm.txt 2>&1
el warm done
timeout 60 $P -m pytest -q -p no:cacheprovider -x tests/test_cupy_chunked_mma.py -k "xscale and decayed and parts" > $W/tests.txt 2>&1
el tests done
timeout 50 $P cli.py check --op decayed --backend cupy:chunked_mma_wgp --dtype float32 -j 8 --time-limit 40 --json $W/check.json > $W/check.txt 2> $W/check_progress.txt
el check done
wait $FPID
el fla done
export FLA_CACHE_RESULTS=1
timeout $(left 230) $P cli.py bench --grid headline --op decayed --dtype float32 --T 16384 --T 65536 \
   --backend cupy:chunked_mma_wgp --backend peer --pass fwdbwd --budget 25 --json $W/bench_dec32.json --md $W/bench_dec32.md > $W/bench_dec32.txt 2>&1
el bench done
kill $TARPID
el all done
