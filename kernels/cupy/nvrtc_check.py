"""Compile every CUDA source in kernels/cuda with NVRTC, without a GPU (``cuda.bindings.nvrtc``).

Each ``kernels.cupy`` submodule that launches kernels lists them in a module-level ``INSTANTIATIONS``:
``[(source_file, name_expression), ...]``.  ``compile_source`` compiles one source for one architecture
with all of its name expressions at once, using kernels/cupy/_module.py's options, and returns the NVRTC
log; a source no module lists is compiled bare (its non-template kernels only).  The sources are
header-free (kernels/cuda/common.cuh), so NVRTC needs no CUDA toolkit headers.

    python -m kernels.cupy.nvrtc_check            # every source, compute_80 and sm_90 (the warpgroup-MMA sources,
                                                  # _module.SM90A_SOURCES: sm_90a alone); exit 1 on any message
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import sys

from ._module import CUDA_DIR, DEFAULT_OPTIONS, SM90A_SOURCES, compile_options, source

# sm_90: to machine code, so ptxas checks every inline PTX instruction on the architecture the kernels are
# tuned for; compute_80: to PTX only (the C++ and the templates on the oldest supported architecture),
# which skips the slow machine-code pass of a second architecture.
ARCHS = ("compute_80", "sm_90")


def archs(name: str) -> tuple:
    """The architectures source ``name`` is checked for: sm_90a alone for the warpgroup-MMA sources."""
    return ("sm_90a",) if name in SM90A_SOURCES else ARCHS


def instantiations() -> dict:
    """source file -> sorted name expressions, over every .cu in kernels/cuda (empty list: none given)."""
    import kernels.cupy as pkg
    found = {f: set() for f in sorted(os.listdir(CUDA_DIR)) if f.endswith(".cu")}
    for m in pkgutil.iter_modules(pkg.__path__):
        if m.name in pkg.TOOLS:
            continue
        mod = importlib.import_module(f"kernels.cupy.{m.name}")
        for src, expr in getattr(mod, "INSTANTIATIONS", ()):
            found.setdefault(src, set()).add(expr)
    return {src: sorted(exprs) for src, exprs in found.items()}


def compile_source(name: str, expressions=(), arch: str = "sm_90", options=DEFAULT_OPTIONS) -> tuple:
    """(ok, log, missing): ok is True when NVRTC succeeds with an empty log; missing lists name expressions
    NVRTC could not resolve."""
    from cuda.bindings import nvrtc
    ok_code = nvrtc.nvrtcResult.NVRTC_SUCCESS
    err, prog = nvrtc.nvrtcCreateProgram(source(name).encode(), name.encode(), 0, [], [])
    if err != ok_code:
        return False, f"nvrtcCreateProgram: {err}", list(expressions)
    try:
        for e in expressions:
            (err,) = nvrtc.nvrtcAddNameExpression(prog, e.encode())
            if err != ok_code:
                return False, f"nvrtcAddNameExpression({e!r}): {err}", [e]
        opts = [o.encode() for o in compile_options(options) + (f"-arch={arch}",)]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        buf = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, buf)
        log = buf.decode(errors="replace").rstrip("\x00").strip()
        missing = []
        if err == ok_code:
            for e in expressions:
                res = nvrtc.nvrtcGetLoweredName(prog, e.encode())
                if res[0] != ok_code:
                    missing.append(e)
        return err == ok_code and not log and not missing, log, missing
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def main() -> int:
    bad = 0
    for src, exprs in instantiations().items():
        for arch in archs(src):
            ok, log, missing = compile_source(src, exprs, arch)
            print(f"{'ok  ' if ok else 'FAIL'} {src} {arch}: {len(exprs)} instantiations")
            if not ok:
                bad += 1
                print(log[:4000], "\nunresolved:", missing)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
