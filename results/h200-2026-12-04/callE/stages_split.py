"""cli.py kernels with the chunked_wgmma.cu kernels at other load stages: python _dev/stages_split.py FWD SEG -- ARGS"""
import sys
from kernels.cupy import _chunked_mma as mma
i = sys.argv.index("--")
mma.WG_FWD_STAGES, mma.WG_SEG_STAGES = int(sys.argv[1]), int(sys.argv[2])
mma._wg_fwd.cache_clear()
mma._wg_seg_state.cache_clear()
print(f"tg_fwd stages {mma.WG_FWD_STAGES}, tg_seg_state stages {mma.WG_SEG_STAGES}", flush=True)
import cli
cli.main.main(sys.argv[i + 1:], standalone_mode=True)
