"""Run the CuPy softmax variants' CUDA kernels on the CPU, through the real host code, against the float64
reference: a correctness check of new kernels before any GPU time is spent.

The sources in kernels/cuda are compiled with g++ (C++20) against scripts/cuda_emu/emu.h, which emulates the
CUDA execution model (one std::thread per CUDA thread, block barriers, warp collectives) and the inline PTX the
sources use (mma.sync f16/bf16/tf32, ldmatrix, cp.async, red, cvt), after this script rewrites every
``asm(...)`` statement into an ``emu::ptx(text, outputs, inputs)`` call.  A stand-in ``cupy`` module on NumPy
arrays lets kernels/cupy/softmax.py run unchanged; its kernel launches go to the emulator.

The emulator is first checked on section 2's tensor-core kernels (cupy:flash_mma), which are verified on real
GPUs: if they fail here, the emulator is wrong, not the kernels.

    python scripts/cuda_emulate.py              # every case; exit 1 on any failure
    python scripts/cuda_emulate.py -k fa2_tf32  # cases whose label contains the text (repeatable: any)

Slow (threads x barriers on a few cores): small shapes only.  bfloat16 is not emulated (NumPy has no such
dtype here); fa_h<wb_bf16> differs from the float16 policy only in its mma and conversion instructions.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
import types

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
EMU_DIR = os.path.join(ROOT, "scripts", "cuda_emu")
CUDA_DIR = os.path.join(ROOT, "kernels", "cuda")


# ----------------------------------------------------------------------------- asm -> emu::ptx rewrite
def _match_paren(s: str, i: int) -> int:
    """Index of the ')' closing the '(' at s[i] (skipping string literals)."""
    depth, j = 0, i
    while j < len(s):
        c = s[j]
        if c == '"':
            j = s.index('"', j + 1)
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    raise ValueError("unbalanced parentheses")


def _split_top(s: str, sep: str) -> list:
    """Split at sep outside string literals and brackets."""
    out, depth, cur, j = [], 0, [], 0
    while j < len(s):
        c = s[j]
        if c == '"':
            k = s.index('"', j + 1)
            cur.append(s[j:k + 1])
            j = k + 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == sep and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        j += 1
    out.append("".join(cur))
    return out


_ASM = re.compile(r"\basm\s*(?:volatile\s*)?\(")
_OPERAND = re.compile(r'^\s*"([=+]?)[a-z]+"\s*\((.*)\)\s*$', re.S)


def rewrite_asm(src: str) -> str:
    out, pos = [], 0
    for m in _ASM.finditer(src):
        if m.start() < pos:
            continue
        open_ = m.end() - 1
        close = _match_paren(src, open_)
        parts = _split_top(src[open_ + 1:close], ":")
        text = parts[0].strip()
        outs = [o for o in _split_top(parts[1], ",") if o.strip()] if len(parts) > 1 else []
        ins = [o for o in _split_top(parts[2], ",") if o.strip()] if len(parts) > 2 else []

        def expr(op):
            mm = _OPERAND.match(op)
            if not mm:
                raise ValueError(f"cannot parse asm operand {op!r}")
            return mm.group(2)
        call = (f"emu::ptx({text}, {{{', '.join(f'emu::Out({expr(o)})' for o in outs)}}}, "
                f"{{{', '.join(f'emu::In({expr(i)})' for i in ins)}}})")
        out.append(src[pos:m.start()])
        out.append(call)
        pos = close + 1
    out.append(src[pos:])
    return "".join(out)


# ----------------------------------------------------------------------------- build
def build(expressions: list, source: str = "softmax.cu") -> tuple:
    """(ctypes library, {expression: function}) for the given kernel instantiations (cached by content)."""
    files = {n: rewrite_asm(open(os.path.join(CUDA_DIR, n)).read())
             for n in os.listdir(CUDA_DIR) if n.endswith((".cu", ".cuh"))}
    wrappers = []
    for i, e in enumerate(expressions):
        wrappers.append(
            f'extern "C" int emu_run_{i}(unsigned grid, unsigned block, void** args) {{\n'
            f"    try {{ emu::launch(grid, block, [&] {{ emu::call(&{e}, args); }}); return 0; }}\n"
            f'    catch (const std::exception& x) {{ fprintf(stderr, "%s\\n", x.what()); return 1; }}\n}}\n')
    main = (f'#include <cstdio>\n#include "emu.h"\n#include "{source}"\n' + "".join(wrappers))
    key = hashlib.sha1((main + "".join(files[k] for k in sorted(files)) +
                        open(os.path.join(EMU_DIR, "emu.h")).read()).encode()).hexdigest()[:16]
    work = os.path.join(tempfile.gettempdir(), f"wb_cuda_emu_{key}")
    lib = os.path.join(work, "emu.so")
    if not os.path.exists(lib):
        os.makedirs(work, exist_ok=True)
        for n, text in files.items():
            with open(os.path.join(work, n), "w") as f:
                f.write(text)
        with open(os.path.join(work, "main.cpp"), "w") as f:
            f.write(main)
        t = time.time()
        cmd = ["g++", "-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w", f"-I{EMU_DIR}", f"-I{work}",
               "-o", lib + ".tmp", os.path.join(work, "main.cpp")]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"g++ failed:\n{r.stderr[:6000]}")
        os.replace(lib + ".tmp", lib)
        print(f"built {len(expressions)} kernels in {time.time() - t:.0f} s ({work})", flush=True)
    so = ctypes.CDLL(lib)
    funcs = {}
    for i, e in enumerate(expressions):
        f = getattr(so, f"emu_run_{i}")
        f.argtypes = [ctypes.c_uint, ctypes.c_uint, ctypes.POINTER(ctypes.c_void_p)]
        f.restype = ctypes.c_int
        funcs[e] = f
    return so, funcs


# ----------------------------------------------------------------------------- a cupy stand-in on NumPy
class HostArray(np.ndarray):
    """A NumPy array that answers ``.data.ptr`` like a cupy.ndarray."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])


def _host(a):
    return np.asarray(a).view(HostArray)


def fake_cupy():
    cp = types.ModuleType("cupy")
    cp.float16, cp.float32, cp.float64, cp.nan = np.float16, np.float32, np.float64, np.nan
    cp.ndarray = HostArray
    cp.empty = lambda shape, dtype=np.float32: _host(np.empty(shape, dtype))
    cp.full = lambda shape, v, dtype=None: _host(np.full(shape, v, dtype))
    cp.zeros = lambda shape, dtype=np.float32: _host(np.zeros(shape, dtype))
    cp.asarray = lambda a, dtype=None: _host(np.array(a, dtype=dtype))
    cp.ascontiguousarray = lambda a, dtype=None: _host(np.ascontiguousarray(a, dtype=dtype))
    cp.asnumpy = lambda a: np.asarray(a)
    return cp


class EmuKernel:
    def __init__(self, expr, func):
        self.expr, self.func = expr, func
        self.max_dynamic_shared_size_bytes = 0

    def __call__(self, grid, block, args, shared_mem=0):
        if shared_mem > 256 * 1024:
            raise ValueError(f"{self.expr}: {shared_mem} bytes of shared memory")
        vals = []
        for a in args:
            if isinstance(a, np.ndarray):
                vals.append(ctypes.c_void_p(a.__array_interface__["data"][0]))
            elif isinstance(a, np.int32):
                vals.append(ctypes.c_int32(int(a)))
            elif isinstance(a, np.int64):
                vals.append(ctypes.c_int64(int(a)))
            elif isinstance(a, np.float32):
                vals.append(ctypes.c_float(float(a)))
            else:
                raise TypeError(f"{self.expr}: argument of type {type(a).__name__}")
        ptrs = (ctypes.c_void_p * len(vals))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in vals])
        if self.func(int(grid[0]), int(block[0]), ptrs):
            raise RuntimeError(f"{self.expr} failed in the emulator")


# ----------------------------------------------------------------------------- cases
def cases():
    """(label, variant, dtype, lead, T, Dk, Dv, causal, full-mantissa float32 inputs)."""
    c = [("emulator self-check: flash_mma (GPU-verified kernels)", "flash_mma", "float16", (1,), 70, 64, 64, True, False)]
    for causal in (True, False):
        c += [(f"fa2 fp16 T=70 D=64 causal={causal}", "fa2", "float16", (2,), 70, 64, 64, causal, False),
              (f"fa2_3xtf32 T=70 D=64 causal={causal}", "fa2_3xtf32", "float32", (1,), 70, 64, 64, causal, True),
              (f"fa2_tf32 T=70 D=64 causal={causal}", "fa2_tf32", "float32", (1,), 70, 64, 64, causal, True)]
    c += [("fa2 fp16 T=1", "fa2", "float16", (2,), 1, 64, 64, True, False),
          ("fa2 fp16 T=200 Dk=Dv=128", "fa2", "float16", (1,), 200, 128, 128, True, False),
          ("fa2 fp16 T=130 Dk=16 Dv=24 (bucket 32)", "fa2", "float16", (2,), 130, 16, 24, False, False),
          ("fa2 fp16 T=67 Dk=5 Dv=7 (plain loads)", "fa2", "float16", (1,), 67, 5, 7, True, False),
          ("fa2 fp16 T=150 D=80 (bucket 128)", "fa2", "float16", (1,), 150, 80, 80, False, False),
          ("fa2_det fp16 T=70 D=64", "fa2_det", "float16", (1,), 70, 64, 64, True, False),
          ("fa2_3xtf32 T=150 Dk=Dv=128", "fa2_3xtf32", "float32", (1,), 150, 128, 128, True, True),
          ("fa2_3xtf32 T=130 Dk=32 Dv=24", "fa2_3xtf32", "float32", (1,), 130, 32, 24, False, True),
          ("fa2_tf32 T=150 Dk=Dv=128", "fa2_tf32", "float32", (1,), 150, 128, 128, False, True)]
    return c


def needed_expressions(cs) -> list:
    ex = list(cs.expressions("mma", "wb_half"))
    for pol, (fam, ct) in cs._fa2_groups().items():
        if ct != "wb_bf16":
            ex += cs.fa2_expressions(pol, fam, ct)
    return list(dict.fromkeys(ex))


def run_case(cs, registry, ref, label, variant, dtype, lead, T, Dk, Dv, causal, full_mantissa):
    from workbench.inputs import random_inputs
    rng = np.random.default_rng(len(label))
    q, k, v = random_inputs("softmax", lead=lead, T=T, Dk=Dk, Dv=Dv, dtype="float64", seed=len(label))
    do = rng.standard_normal((*lead, T, Dv))
    rnd = np.float32 if full_mantissa else np.float16
    q, k, v, do = (a.astype(rnd).astype(np.float64) for a in (q, k, v, do))
    N = int(np.prod(lead))
    flat = [_host(np.ascontiguousarray(a.reshape(N, T, -1).astype(dtype))) for a in (q, k, v, do)]
    scale = 1.0 / np.sqrt(Dk)
    var = registry.get("softmax", "cupy", variant)
    out, ctx = var.forward(*flat[:3], causal=causal, scale=scale)
    grads = var.backward(ctx, flat[3])
    o_ref, rctx = ref.explicit_forward(q, k, v, causal=causal, scale=scale)
    g_ref = ref.explicit_backward(rctx, do)
    errs = {}
    for name, x, r in zip(("o", "dq", "dk", "dv"), (out,) + tuple(grads), (o_ref,) + tuple(g_ref)):
        x = np.asarray(x, np.float64).reshape(r.shape)
        nr = np.linalg.norm(r)
        errs[name] = np.linalg.norm(x - r) / nr if nr > 0 else np.linalg.norm(x - r)
    tol = 5e-3 if "tf32" in var.tags else {"float32": 1e-4, "float16": 2e-2}[dtype]
    ok = all(np.isfinite(e) and e < tol for e in errs.values())
    return ok, errs, tol


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-k", action="append", default=[], help="only cases whose label contains this text")
    a = ap.parse_args(argv)
    sys.modules["cupy"] = fake_cupy()
    from workbench import backends, registry
    from workbench.reference import softmax as ref
    from kernels.cupy import softmax as cs
    _, funcs = build(needed_expressions(cs))
    cs.get_kernel = lambda src, expr, options=None, group=None: EmuKernel(expr, funcs[expr])
    bad = ran = 0
    for case in cases():
        if a.k and not any(k in case[0] for k in a.k):
            continue
        ran += 1
        t = time.time()
        with backends.poisoned():
            ok, errs, tol = run_case(cs, registry, ref, *case)
        bad += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {case[0]}: " + " ".join(f"{n} {e:.1e}" for n, e in errs.items())
              + f" (tol {tol:.0e}, {time.time() - t:.0f} s)", flush=True)
    if not ran:
        print("no case matches", a.k)
    return 1 if bad or not ran else 0


if __name__ == "__main__":
    sys.exit(main())
