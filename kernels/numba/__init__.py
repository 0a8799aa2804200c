"""Numba CUDA kernels.  Every submodule (one per op family: softmax.py, linear.py, decayed.py, zeros.py)
registers its ``numba:<variant>`` entries when imported; this package imports them all.  Submodules import
``numba.cuda`` at module level only inside functions, so registration works without a GPU."""
import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")
