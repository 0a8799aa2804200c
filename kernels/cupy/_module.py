"""Loading CUDA C++ sources from ``kernels/cuda`` as CuPy RawModules, templated through name expressions.

    kern = get_kernel("softmax.cu", "flash_fwd<float, 64, 64, 64>")
    launch(kern, grid, block, (args...), shared_mem=nbytes)

One RawModule is compiled per (source, group of template instantiations, options) and cached in memory
(CuPy also caches the binary on disk).  ``group`` lets a caller compile several instantiations in one NVRTC
run (one compile instead of one per kernel); without it the module holds just ``expression``.  Sources
may ``#include "common.cuh"`` (the include path is ``kernels/cuda``).  The same options are used by the
NVRTC compile test (``kernels/cupy/nvrtc_check.py``), which adds ``-arch`` itself; CuPy picks the
device's architecture.
"""
from __future__ import annotations

import functools
import os

CUDA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cuda")
DEFAULT_OPTIONS = ("-std=c++17", "--use_fast_math")
STATIC_SMEM_LIMIT = 48 * 1024       # dynamic shared memory above this needs an opt-in attribute


def source(name: str) -> str:
    with open(os.path.join(CUDA_DIR, name)) as f:
        return f.read()


def compile_options(options: tuple = DEFAULT_OPTIONS) -> tuple:
    """The NVRTC options every module is built with (the include path added)."""
    return tuple(options) + (f"-I{CUDA_DIR}",)


@functools.lru_cache(maxsize=None)
def _module(name: str, expressions: tuple, options: tuple):
    import cupy
    return cupy.RawModule(code=source(name), options=compile_options(options),
                          name_expressions=list(expressions))


@functools.lru_cache(maxsize=None)
def get_kernel(name: str, expression: str, options: tuple = DEFAULT_OPTIONS, group: tuple = None):
    """The RawKernel ``expression`` of source ``name``; ``group`` (a tuple holding ``expression``) names
    the instantiations compiled together with it."""
    exprs = tuple(group) if group else (expression,)
    if expression not in exprs:
        raise ValueError(f"{expression!r} is not in its compile group")
    return _module(name, exprs, tuple(options)).get_function(expression)


_OPTED_IN: dict = {}      # id(kernel) -> dynamic shared memory opted in (kernels are cached, never freed)


def launch(kernel, grid, block, args, shared_mem: int = 0) -> None:
    """Launch ``kernel``; opts in to more than 48 KiB of dynamic shared memory when asked for it."""
    if shared_mem > STATIC_SMEM_LIMIT and _OPTED_IN.get(id(kernel), 0) < shared_mem:
        kernel.max_dynamic_shared_size_bytes = shared_mem
        _OPTED_IN[id(kernel)] = shared_mem
    kernel(tuple(grid), tuple(block), tuple(args), shared_mem=shared_mem)
