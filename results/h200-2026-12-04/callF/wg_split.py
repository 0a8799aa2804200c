"""cli.py with _chunked_mma's wgmma settings changed first:  python _dev/wg_split.py NAME=VALUE ... -- ARGS
(e.g. WG_DKDV_LOWREG=0 WG_FWD_STAGES=3); every cached launchable of chunked_wgmma.cu is cleared."""
import sys
from kernels.cupy import _chunked_mma as mma
i = sys.argv.index("--")
for kv in sys.argv[1:i]:
    name, val = kv.split("=")
    setattr(mma, name, type(getattr(mma, name))(int(val)))
for f in (mma._wg_fwd, mma._wg_seg_state, mma._wg_dq, mma._wg_dkdv):
    f.cache_clear()
print("settings:", " ".join(f"{kv.split('=')[0]}={getattr(mma, kv.split('=')[0])}" for kv in sys.argv[1:i]), flush=True)
import cli
cli.main.main(sys.argv[i + 1:], standalone_mode=True)
