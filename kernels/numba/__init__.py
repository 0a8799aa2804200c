"""Numba CUDA kernels.  Each submodule of ``OP_MODULES`` (one per op family: softmax.py, linear.py,
decayed.py, zeros.py) registers its ``numba:<variant>`` entries when imported.  Importing this package
imports none of them: the registry imports the one an op needs at its first lookup of that op's Numba
variants (``workbench.registry._PROVIDERS``; a first call of one op then pays for that op's module alone),
``registry.load_all()`` or ``load()`` imports them all.

Kernels are compiled per head-dim bucket and cached on disk (``_jit.py``); ``warmup()`` compiles all of
them for the local GPU ahead of use (``_warmup.py``, imported on first use); ``python -m
kernels.numba.ptx_check`` compiles them to PTX without a GPU."""
import importlib

__all__ = ["warmup", "load", "OP_MODULES"]
OP_MODULES = ("softmax", "linear", "decayed", "zeros")     # the submodules that register variants
TOOLS = ("ptx_check",)           # command-line tools: they register nothing


def load() -> None:
    """Import every submodule of OP_MODULES (each registers its variants)."""
    for name in OP_MODULES:
        importlib.import_module(f"{__name__}.{name}")


def __getattr__(name):
    if name == "warmup":                  # _warmup imports multiprocessing: only for a warm-up
        from ._warmup import warmup
        return warmup
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
