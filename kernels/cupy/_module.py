"""Loading CUDA C++ sources from ``kernels/cuda`` as CuPy RawModules, templated through name expressions.

    kern = get_kernel("softmax.cu", "flash_fwd<float, 64, 64>")
    kern((grid,), (block,), (args...), shared_mem=nbytes)

One RawModule is compiled per (source, template instantiation, options) and cached in memory (CuPy also
caches the binary on disk).  Sources may
``#include "common.cuh"`` (the include path is ``kernels/cuda``).
"""
from __future__ import annotations

import functools
import os

CUDA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cuda")
DEFAULT_OPTIONS = ("-std=c++17", "--use_fast_math")


def source(name: str) -> str:
    with open(os.path.join(CUDA_DIR, name)) as f:
        return f.read()


@functools.lru_cache(maxsize=None)
def get_kernel(name: str, expression: str, options: tuple = DEFAULT_OPTIONS):
    import cupy
    mod = cupy.RawModule(code=source(name), options=tuple(options) + (f"-I{CUDA_DIR}",),
                         name_expressions=[expression])
    return mod.get_function(expression)
