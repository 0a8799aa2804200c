"""Numba CUDA kernels.  Every submodule (one per op family: softmax.py, linear.py, decayed.py, zeros.py)
registers its ``numba:<variant>`` entries when imported; this package imports them all (not the private
helpers, nor the command-line tools of ``TOOLS``).

Kernels are compiled per head-dim bucket and cached on disk (``_jit.py``); ``warmup()`` compiles all of
them for the local GPU ahead of use (``_warmup.py``); ``python -m kernels.numba.ptx_check`` compiles them to
PTX without a GPU."""
import importlib
import pkgutil

from ._warmup import warmup

__all__ = ["warmup"]
TOOLS = ("ptx_check",)           # command-line tools: they register nothing

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_") and _m.name not in TOOLS:
        importlib.import_module(f"{__name__}.{_m.name}")
