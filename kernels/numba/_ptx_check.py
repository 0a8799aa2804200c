"""Deprecated name of ``kernels.numba.ptx_check`` (the command ``python -m kernels.numba._ptx_check`` of older
notes still works, with a FutureWarning)."""
import sys
import warnings

from .ptx_check import *  # noqa: F401,F403
from .ptx_check import main

if __name__ == "__main__":
    warnings.warn("python -m kernels.numba._ptx_check is now python -m kernels.numba.ptx_check", FutureWarning)
    sys.exit(main())
