# Sourced by a short call on a lent GPU machine (results/<gpu>-<date>/call*/call.sh; the session-long run is
# scripts/gpu_session.sh): what every such call did by hand --
#
#   source scripts/device_call.sh NAME      # results in /tmp/NAME, shipped to $OUT/NAME.tgz as the call goes
#   warm_fla linear decayed:float16         # fla's Triton autotuning in the background (FPIDS: wait $FPIDS)
#   ... el "step done" ... timeout $(left 450) ...
#   call_end
#
# NAME's folder gets commit.txt (the tree in _dev/TREE), gpu.txt and timeline.txt (el's lines, seconds since the
# start); the tarball is refreshed every 10 s and at each el, so what ran before a time-out still comes back.
# left N: the seconds left until N s after the start (at least 10), a step's timeout.  Needs $OUT (the device tool's).
CALL_NAME="$1"
P="${PYTHON:-python3}"
W="/tmp/$CALL_NAME"
mkdir -p "$W"
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 )) s] $*" | tee -a "$W/timeline.txt"; tar czf "$OUT/$CALL_NAME.tgz" -C /tmp "$CALL_NAME"; }
left() { local x=$(( T0 + $1 - $(date +%s) )); echo $(( x > 10 ? x : 10 )); }
( while true; do sleep 10; tar czf "$OUT/$CALL_NAME.tmp.tgz" -C /tmp "$CALL_NAME" 2>/dev/null \
    && mv "$OUT/$CALL_NAME.tmp.tgz" "$OUT/$CALL_NAME.tgz"; done ) > /dev/null 2>&1 &
TARPID=$!
echo "tree: $(cat _dev/TREE 2>/dev/null || git rev-parse --short HEAD 2>/dev/null)" > "$W/commit.txt"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm --format=csv > "$W/gpu.txt" 2>&1
FPIDS=""
# fla's peer at T = 1024 for each OP or OP:DTYPE given (float32 when no dtype), in the background (its autotuning
# cached for the benches after); the log is flac-OP.txt (float32) or flac-OP-DTYPE.txt
# First the roofline's ceilings, measured again on the idle GPU (ceilings.txt; cached for the call's benches): left to the
# first bench, they were measured beside fla's autotuning and came out low (callAG: float32 15.3 TFLOP/s, 51 in callY).
warm_fla() {
    local spec op dt
    $P -c "from workbench.bench import ceilings; ceilings.get_ceilings(gpu=True, remeasure=True)" > "$W/ceilings.txt" 2>&1
    for spec in "$@"; do
        op="${spec%%:*}"; dt=float32; [ "$spec" != "$op" ] && dt="${spec#*:}"
        FLA_CACHE_RESULTS=1 timeout 240 $P cli.py bench --grid headline --op "$op" --backend peer --dtype "$dt" \
            --T 1024 --budget 5 > "$W/flac-$op$([ "$dt" = float32 ] || echo "-$dt").txt" 2>&1 &
        FPIDS="$FPIDS $!"
    done
}
call_end() { kill "$TARPID" 2>/dev/null; el all done; }
