"""cli.py with kernels.cupy.softmax's FA2_ONE_LAUNCH_MAX_T set first:  python _dev/fa2_set.py N -- ARGS"""
import sys
from kernels.cupy import softmax as cs
i = sys.argv.index("--")
cs.FA2_ONE_LAUNCH_MAX_T = int(sys.argv[1])
print("FA2_ONE_LAUNCH_MAX_T =", cs.FA2_ONE_LAUNCH_MAX_T, flush=True)
import cli
cli.main.main(sys.argv[i + 1:], standalone_mode=True)
