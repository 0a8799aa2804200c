"""CuPy RawModule kernels (CUDA C++ sources in kernels/cuda).  Every submodule (one per op family: softmax.py, linear.py, decayed.py, zeros.py)
registers its ``cupy:<variant>`` entries when imported; this package imports them all.  Submodules import
``cupy`` only inside functions, so registration works without a GPU."""
import importlib
import pkgutil

TOOLS = ("nvrtc_check",)         # command-line tools: they register nothing

for _m in pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_") and _m.name not in TOOLS:
        importlib.import_module(f"{__name__}.{_m.name}")
