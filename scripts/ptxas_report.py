"""Registers, spills and stack of CUDA kernels as ptxas reports them, without a GPU.

Compiles one kernels/cuda source with NVRTC for a real architecture (NVRTC runs ptxas itself) with
``-Xptxas -v`` and the name expressions the kernels.cupy modules list (``INSTANTIATIONS``), then prints one
line per kernel: registers, spill stores/loads (bytes), stack frame (bytes).  A kernel of 128 threads
needs <= 255 registers to run at all and <= 128 (or 168, 255) for 4 (3, 2) blocks per SM.

    python scripts/ptxas_report.py                        # softmax.cu, sm_90, every instantiation
    python scripts/ptxas_report.py --match fa2_ --arch sm_80
    python scripts/ptxas_report.py --source linear.cu
    python scripts/ptxas_report.py --source chunked_mma.cu --match tc_ --nvrtc .nvrtc12/nvidia/cuda_nvrtc/lib/libnvrtc.so.12

The header names the NVRTC version that compiled.  ``--cubin FILE`` also writes the compiled cubin (every matched
instantiation), for a disassembler of a CUDA toolkit: ``nvdisasm -c FILE`` (instruction mix, schedule).  By default that is cuda.bindings' NVRTC (13.5 with
``.[test]`` on the CPU machines); ``--nvrtc LIB`` compiles through the shared library at path LIB instead
(ctypes).  The H200 runs what NVRTC 12.9 builds (the nvidia-cuda-nvrtc-cu12 12.9.86 wheel cupy-cuda12x
brings), and ptxas of 12.9 and 13.5 differ by 10-40 registers per kernel (``tc_fwd<float, 64, 3, 1>``: 167
under 12.9, what Nsight Compute shows on the GPU, 168 under 13.5).  Register counts quoted in
docs/kernels/*.md come from the GPU's version: ``bash scripts/fetch_nvrtc12.sh`` once (downloads the wheel
into the git-ignored .nvrtc12/), then ``--nvrtc .nvrtc12/nvidia/cuda_nvrtc/lib/libnvrtc.so.12``.

Exit status 1 when NVRTC fails or any matched kernel spills (``--allow-spills`` to report only).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels.cupy import nvrtc_check  # noqa: E402
from kernels.cupy._module import DEFAULT_OPTIONS, compile_options, source  # noqa: E402

_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")
NVRTC12 = ".nvrtc12/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"     # where scripts/fetch_nvrtc12.sh unpacks the GPU's NVRTC


def _compile_bindings(src: str, name: str, expressions: list, opts: list) -> tuple:
    """(ok, log, {lowered name: expression}, cubin bytes or None) through cuda.bindings' NVRTC (the one
    ``.[test]`` installs)."""
    from cuda.bindings import nvrtc
    ok_code = nvrtc.nvrtcResult.NVRTC_SUCCESS
    err, prog = nvrtc.nvrtcCreateProgram(src.encode(), name.encode(), 0, [], [])
    if err != ok_code:
        raise RuntimeError(f"nvrtcCreateProgram: {err}")
    try:
        for e in expressions:
            nvrtc.nvrtcAddNameExpression(prog, e.encode())
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        buf = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, buf)
        log = buf.decode(errors="replace").rstrip("\x00")
        lowered, cubin = {}, None
        for e in expressions if err == ok_code else ():
            res = nvrtc.nvrtcGetLoweredName(prog, e.encode())
            if res[0] == ok_code:
                lowered[res[1].decode()] = e
        if err == ok_code:
            _, size = nvrtc.nvrtcGetCUBINSize(prog)
            cubin = b" " * size
            nvrtc.nvrtcGetCUBIN(prog, cubin)
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    return err == ok_code, log, lowered, cubin


def _load(lib: str):
    """The NVRTC shared library at path ``lib`` through ctypes, its functions' signatures declared."""
    c = ctypes
    dll = c.CDLL(os.path.abspath(lib))     # libnvrtc.so.* finds its libnvrtc-builtins beside it ($ORIGIN)
    prog_p, strs = c.POINTER(c.c_void_p), c.POINTER(c.c_char_p)
    for fn, args in (("nvrtcVersion", [c.POINTER(c.c_int)] * 2),
                     ("nvrtcCreateProgram", [prog_p, c.c_char_p, c.c_char_p, c.c_int, strs, strs]),
                     ("nvrtcAddNameExpression", [c.c_void_p, c.c_char_p]),
                     ("nvrtcCompileProgram", [c.c_void_p, c.c_int, strs]),
                     ("nvrtcGetProgramLogSize", [c.c_void_p, c.POINTER(c.c_size_t)]),
                     ("nvrtcGetProgramLog", [c.c_void_p, c.c_char_p]),
                     ("nvrtcGetLoweredName", [c.c_void_p, c.c_char_p, strs]),
                     ("nvrtcGetCUBINSize", [c.c_void_p, c.POINTER(c.c_size_t)]),
                     ("nvrtcGetCUBIN", [c.c_void_p, c.c_char_p]),
                     ("nvrtcDestroyProgram", [prog_p])):
        f = getattr(dll, fn)
        f.argtypes, f.restype = args, c.c_int
    dll.nvrtcGetErrorString.argtypes, dll.nvrtcGetErrorString.restype = [c.c_int], c.c_char_p
    return dll


def _compile_ctypes(lib: str, src: str, name: str, expressions: list, opts: list) -> tuple:
    """(ok, log, {lowered name: expression}, cubin bytes or None) through the NVRTC library at path ``lib``,
    by ctypes."""
    c, dll = ctypes, _load(lib)

    def check(fn, res):
        if res:
            raise RuntimeError(f"{fn} ({lib}): {dll.nvrtcGetErrorString(res).decode()}")

    prog = c.c_void_p()
    check("nvrtcCreateProgram", dll.nvrtcCreateProgram(c.byref(prog), src.encode(), name.encode(), 0, None, None))
    try:
        for e in expressions:
            check("nvrtcAddNameExpression", dll.nvrtcAddNameExpression(prog, e.encode()))
        err = dll.nvrtcCompileProgram(prog, len(opts), (c.c_char_p * len(opts))(*opts))
        size = c.c_size_t()
        check("nvrtcGetProgramLogSize", dll.nvrtcGetProgramLogSize(prog, c.byref(size)))
        buf = c.create_string_buffer(size.value)
        check("nvrtcGetProgramLog", dll.nvrtcGetProgramLog(prog, buf))
        log = buf.value.decode(errors="replace")
        lowered, cubin = {}, None
        for e in expressions if err == 0 else ():
            out = c.c_char_p()
            if dll.nvrtcGetLoweredName(prog, e.encode(), c.byref(out)) == 0:
                lowered[out.value.decode()] = e
        if err == 0:
            check("nvrtcGetCUBINSize", dll.nvrtcGetCUBINSize(prog, c.byref(size)))
            buf = c.create_string_buffer(size.value)
            check("nvrtcGetCUBIN", dll.nvrtcGetCUBIN(prog, buf))
            cubin = buf.raw
    finally:
        dll.nvrtcDestroyProgram(c.byref(prog))
    return err == 0, log, lowered, cubin


def nvrtc_version(lib: str | None = None) -> str:
    """"major.minor" of cuda.bindings' NVRTC (``lib`` None) or of the library at path ``lib``."""
    if lib is None:
        from cuda.bindings import nvrtc
        _, major, minor = nvrtc.nvrtcVersion()
        return f"{major}.{minor}"
    major, minor = ctypes.c_int(), ctypes.c_int()
    _load(lib).nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return f"{major.value}.{minor.value}"


def report(name: str, expressions: list, arch: str, lib: str | None = None, cubin: str | None = None) -> tuple:
    """(rows, log): rows = [(expression, registers, spill_stores, spill_loads, stack)], NVRTC's log.
    ``lib``: path of a libnvrtc.so.* to compile with (ctypes); None: cuda.bindings' NVRTC.  ``cubin``: a path
    the compiled cubin is written to (when the compile succeeds)."""
    opts = [o.encode() for o in compile_options(DEFAULT_OPTIONS) + (f"-arch={arch}", "-Xptxas", "-v")]
    if lib is None:
        ok, log, lowered, binary = _compile_bindings(source(name), name, expressions, opts)
    else:
        ok, log, lowered, binary = _compile_ctypes(lib, source(name), name, expressions, opts)
    if not ok:
        return None, log
    if cubin is not None:
        with open(cubin, "wb") as f:
            f.write(binary)
    stats, cur = {}, None
    for line in log.splitlines():
        if (m := _ENTRY.search(line)):
            cur = lowered.get(m.group(1), m.group(1))
            stats[cur] = [0, 0, 0, 0]
        elif cur and (m := _SPILL.search(line)):
            stats[cur][1:] = [int(m.group(2)), int(m.group(3)), int(m.group(1))]
        elif cur and (m := _REGS.search(line)):
            stats[cur][0] = int(m.group(1))
    return [(e, *stats[e]) for e in sorted(stats)], log


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", default="softmax.cu")
    ap.add_argument("--arch", default="sm_90")
    ap.add_argument("--match", default="", help="only name expressions containing this text")
    ap.add_argument("--allow-spills", action="store_true")
    ap.add_argument("--nvrtc", metavar="LIB", help="path of a libnvrtc.so.* to compile with (ctypes) instead of "
                    "cuda.bindings' NVRTC; the GPU's 12.9: scripts/fetch_nvrtc12.sh, then " + NVRTC12)
    ap.add_argument("--cubin", metavar="FILE", help="also write the compiled cubin there (disassemble: nvdisasm -c FILE)")
    a = ap.parse_args(argv)
    if a.nvrtc is not None:
        if not os.path.isfile(a.nvrtc):
            ap.error(f"argument --nvrtc: no such file: {a.nvrtc!r} (scripts/fetch_nvrtc12.sh fetches {NVRTC12})")
        try:
            version = nvrtc_version(a.nvrtc)
        except (OSError, AttributeError) as exc:
            ap.error(f"argument --nvrtc: {a.nvrtc!r} is not an NVRTC library: {exc}")
    else:
        version = nvrtc_version()
    exprs = [e for e in nvrtc_check.instantiations().get(a.source, []) if a.match in e]
    if not exprs:
        print(f"no instantiation of {a.source} matches {a.match!r}")
        return 1
    rows, log = report(a.source, exprs, a.arch, a.nvrtc, a.cubin)
    if rows is None:
        print(log)
        return 1
    w = max(len(r[0]) for r in rows)
    lib = a.nvrtc or "cuda.bindings"
    print(f"{'kernel':<{w}}  regs  spill-st  spill-ld  stack   ({a.source}, {a.arch}, NVRTC {version}: {lib})")
    for e, regs, st, ld, stack in rows:
        print(f"{e:<{w}}  {regs:4d}  {st:8d}  {ld:8d}  {stack:5d}")
    spills = [r for r in rows if r[2] or r[3]]
    return 1 if spills and not a.allow_spills else 0


if __name__ == "__main__":
    sys.exit(main())
