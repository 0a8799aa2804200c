"""Numba CUDA kernels.  Every submodule (one per op family: softmax.py, linear.py, decayed.py, zeros.py)
registers its ``numba:<variant>`` entries when imported; this package imports them all.

Kernels are compiled per head-dim bucket and cached on disk (``_jit.py``); ``warmup()`` compiles all of
them for the local GPU ahead of use (``_warmup.py``)."""
import importlib
import pkgutil

from ._warmup import warmup

__all__ = ["warmup"]

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
