"""Registers, spills and stack of CUDA kernels as ptxas reports them, without a GPU.

Compiles one kernels/cuda source with NVRTC for a real architecture (NVRTC runs ptxas itself) with
``-Xptxas -v`` and the name expressions the kernels.cupy modules list (``INSTANTIATIONS``), then prints one
line per kernel: registers, spill stores/loads (bytes), stack frame (bytes).  A kernel of 128 threads
needs <= 255 registers to run at all and <= 128 (or 168, 255) for 4 (3, 2) blocks per SM.

    python scripts/ptxas_report.py                        # softmax.cu, sm_90, every instantiation
    python scripts/ptxas_report.py --match fa2_ --arch sm_80
    python scripts/ptxas_report.py --source linear.cu

Exit status 1 when NVRTC fails or any matched kernel spills (``--allow-spills`` to report only).
"""
from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels.cupy import nvrtc_check  # noqa: E402
from kernels.cupy._module import DEFAULT_OPTIONS, compile_options, source  # noqa: E402

_ENTRY = re.compile(r"Compiling entry function '([^']+)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def report(name: str, expressions: list, arch: str) -> tuple:
    """(rows, log): rows = [(expression, registers, spill_stores, spill_loads, stack)], NVRTC's log."""
    from cuda.bindings import nvrtc
    ok_code = nvrtc.nvrtcResult.NVRTC_SUCCESS
    err, prog = nvrtc.nvrtcCreateProgram(source(name).encode(), name.encode(), 0, [], [])
    try:
        for e in expressions:
            nvrtc.nvrtcAddNameExpression(prog, e.encode())
        opts = [o.encode() for o in compile_options(DEFAULT_OPTIONS) + (f"-arch={arch}", "-Xptxas", "-v")]
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        buf = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, buf)
        log = buf.decode(errors="replace").rstrip("\x00")
        if err != ok_code:
            return None, log
        lowered = {}
        for e in expressions:
            res = nvrtc.nvrtcGetLoweredName(prog, e.encode())
            if res[0] == ok_code:
                lowered[res[1].decode()] = e
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
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
    a = ap.parse_args(argv)
    exprs = [e for e in nvrtc_check.instantiations().get(a.source, []) if a.match in e]
    if not exprs:
        print(f"no instantiation of {a.source} matches {a.match!r}")
        return 1
    rows, log = report(a.source, exprs, a.arch)
    if rows is None:
        print(log)
        return 1
    w = max(len(r[0]) for r in rows)
    print(f"{'kernel':<{w}}  regs  spill-st  spill-ld  stack   ({a.source}, {a.arch})")
    for e, regs, st, ld, stack in rows:
        print(f"{e:<{w}}  {regs:4d}  {st:8d}  {ld:8d}  {stack:5d}")
    spills = [r for r in rows if r[2] or r[3]]
    return 1 if spills and not a.allow_spills else 0


if __name__ == "__main__":
    sys.exit(main())
