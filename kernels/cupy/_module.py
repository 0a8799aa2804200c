"""Loading CUDA C++ sources from ``kernels/cuda`` as CuPy RawModules, templated through name expressions.

    kern = get_kernel("softmax.cu", "flash_fwd<float, 64, 64, 64>")
    launch(kern, grid, block, (args...), shared_mem=nbytes)

Compile groups.  One RawModule is compiled per (source, group of template instantiations, options): one
NVRTC run for the whole group, cached in memory and by CuPy on disk (``CUPY_CACHE_DIR``, default
``~/.cupy/kernel_cache``; CuPy >= 14.2 keys modules built from name expressions by the exact group).  For
the disk cache to serve a later process, the group an expression is compiled in must not depend on the
call: every kernel module declares its groups once, at import, with ``declare_groups``, and
``get_kernel`` compiles an expression with its declared group (an undeclared expression alone).
``groups()`` lists every declared group, for ``cli.py warmup``.

Sources may ``#include "x.cuh"`` (the include path is ``kernels/cuda``).  CuPy's cache key holds the source
text but not the headers it includes, so ``source`` appends a comment with a hash of every header it
includes (transitively): editing a header invalidates the cached binaries of every source that uses it.
The same options are used by the NVRTC compile test (``kernels/cupy/nvrtc_check.py``), which adds
``-arch`` itself; CuPy picks the device's architecture.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re

CUDA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "cuda")
DEFAULT_OPTIONS = ("-std=c++17", "--use_fast_math")
STATIC_SMEM_LIMIT = 48 * 1024       # dynamic shared memory above this needs an opt-in attribute
# The C++ storage type of each dtype the kernels take (kernels/cuda/common.cuh) and its size in bytes.
CTYPE = {"float32": "float", "float16": "wb_half", "bfloat16": "wb_bf16"}
ITEMSIZE = {"float32": 4, "float16": 2, "bfloat16": 2}
_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def _read(name: str) -> str:
    with open(os.path.join(CUDA_DIR, name)) as f:
        return f.read()


def _headers(text: str, seen: list) -> list:
    """Local headers included by ``text``, transitively, in first-inclusion order."""
    for h in _INCLUDE.findall(text):
        if h not in seen and os.path.exists(os.path.join(CUDA_DIR, h)):
            seen.append(h)
            _headers(_read(h), seen)
    return seen


@functools.lru_cache(maxsize=None)
def source(name: str) -> str:
    """The text of ``kernels/cuda/<name>``, plus a last comment line naming a hash of each included header."""
    text = _read(name)
    tags = [f"{h}:{hashlib.sha1(_read(h).encode()).hexdigest()[:16]}" for h in _headers(text, [])]
    return text + (f"\n// included headers: {' '.join(tags)}\n" if tags else "")


def compile_options(options: tuple = DEFAULT_OPTIONS) -> tuple:
    """The NVRTC options every module is built with (the include path added)."""
    return tuple(options) + (f"-I{CUDA_DIR}",)


# ----------------------------------------------------------------------------- compile groups
_GROUP_OF: dict = {}      # (source, expression) -> the declared group (tuple of expressions) it compiles in
_GROUPS: list = []        # [(source, group)] in declaration order


def declare_groups(name: str, groups) -> None:
    """Declare the compile groups of source ``name``: each a sequence of name expressions compiled together.
    ``get_kernel`` compiles an expression in the first group declared with it, unless the caller names
    another declared group (an expression shared by two families, say)."""
    for g in groups:
        g = tuple(g)
        for e in g:
            _GROUP_OF.setdefault((name, e), g)
        if (name, g) not in _GROUPS:
            _GROUPS.append((name, g))


def groups() -> list:
    """[(source, expressions)] of every declared compile group."""
    return list(_GROUPS)


def group_of(name: str, expression: str) -> tuple:
    """The expressions ``expression`` is compiled with: its declared group, else itself alone."""
    return _GROUP_OF.get((name, expression), (expression,))


@functools.lru_cache(maxsize=None)
def _module(name: str, expressions: tuple, options: tuple):
    import cupy
    return cupy.RawModule(code=source(name), options=compile_options(options),
                          name_expressions=list(expressions))


def compile_group(name: str, expressions: tuple, options: tuple = DEFAULT_OPTIONS) -> None:
    """Compile (or load from CuPy's disk cache) one group for the current device."""
    _module(name, tuple(expressions), tuple(options)).compile()


@functools.lru_cache(maxsize=None)
def get_kernel(name: str, expression: str, options: tuple = DEFAULT_OPTIONS, group: tuple = None):
    """The RawKernel ``expression`` of source ``name``, compiled with its declared group (or with
    ``group``, a tuple holding ``expression``, when given)."""
    exprs = tuple(group) if group else group_of(name, expression)
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


def padded_dim(d: int, dims: tuple) -> int:
    """The smallest of ``dims`` (ascending template head dims) that holds ``d``."""
    for p in dims:
        if d <= p:
            return p
    raise ValueError(f"head dim {d} > {dims[-1]}")
