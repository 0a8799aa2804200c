"""Numba CUDA kernels.  Each op family's submodule (softmax.py, linear.py, decayed.py, zeros.py: listed in
``workbench.registry._PROVIDERS``) registers its ``numba:<variant>`` entries when imported.  Importing this
package imports none of them: the registry imports the one an op needs at its first lookup of that op's
Numba variants (a first call of one op then pays for that op's module alone); ``registry.load_all()``
imports them all.

Kernels are compiled per head-dim bucket and cached on disk (``_jit.py``); ``warmup()`` compiles all of
them for the local GPU ahead of use (``_warmup.py``, imported on first use); ``python -m
kernels.numba.ptx_check`` compiles them to PTX without a GPU."""
__all__ = ["warmup"]
TOOLS = ("ptx_check",)           # command-line tools: they register nothing (every other public submodule is a
                                 # provider of registry._PROVIDERS: tests/test_opspec.py)


def __getattr__(name):
    if name == "warmup":                  # _warmup imports multiprocessing: only for a warm-up
        from ._warmup import warmup
        return warmup
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
