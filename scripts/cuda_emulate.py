"""Run the CuPy kernels of kernels/cuda on the CPU, through the real host code of kernels/cupy, against float64
references: a correctness check of new kernels before any GPU time is spent.

A stand-in ``cupy`` module (NumPy arrays, 256-byte aligned like CuPy's allocations) is installed before
anything imports CuPy.  Its ``RawModule`` compiles each kernel a module asks for (one g++ build per source
text and name expression, C++20, cached on disk by content) against scripts/cuda_emu/emu.h, which emulates the
CUDA execution model (one std::thread per CUDA thread, block barriers, warp collectives) and the inline PTX
the sources use, after this script rewrites every ``asm(...)`` statement into an ``emu::ptx(text, outputs,
inputs)`` call and every ``__shared__`` declaration into emulator memory (poisoned before each block).  Its
kernels check a launch as the driver would (argument count and sizes against the kernel's parameters, the
dynamic shared-memory opt-in, grid and block limits).  So every kernels/cupy module runs unchanged; which
cases run is data (``cases()``): each names its family (the kernel module it checks), a runner (the check that
family's GPU tests make) and the runner's arguments.

Families:  softmax      the registry's cupy softmax variants against workbench.reference.softmax; first the
                        emulator's self-check on cupy:flash_mma (tensor-core kernels verified on GPUs: if
                        they fail here, the emulator is wrong, not the kernels)
           chunked_mma  kernels/cupy/_chunked_mma.py forward + backward through tests/test_cupy_chunked_mma.py's
                        run_case (a float64 token-by-token recurrence) and its tolerances, with one load stage
                        (cupy:chunked_mma) and two (chunked_mma_db)
           zeros        the cupy ZeroS variants through tests/test_cupy_zeros_mma.py's _vjp_errors and
                        tolerances, and that file's GPU tests of the scan and row kernels, called as they are
           wgmma        kernels/cuda/wgmma.cuh's warpgroup MMA (the emulator's model of it) through
                        tests/test_wgmma.py's products against NumPy
           steps        the step kernels (kernels/cupy/steps.py) through tests/test_steps_kernel.py's GPU tests,
                        every parametrisation (op x shape x dtype, every block geometry, the extreme values)
           every op     one cell of ``cli.py check`` (workbench.check.compare) per registered cupy variant
                        and dtype: every module of kernels/cupy, state and packed sequences where implemented

    python scripts/cuda_emulate.py              # every case; exit 1 on any failure (or when none ran)
    python scripts/cuda_emulate.py -k fa2_tf32  # cases whose label contains the text (repeatable: any)
    python scripts/cuda_emulate.py --list       # the case labels

Slow (threads x barriers on a few cores): small shapes only.  bfloat16: NumPy's through ml_dtypes (cases left out
without it); emu.h's cvt (round to nearest even) and mma read and round bfloat16 as the GPU does.  Only the
chunked_mma cases that name it run it (the bfloat16 decayed core: its hi + lo state operands); the other families'
bfloat16 kernels differ from their float16 ones only in their mma and conversion instructions.  Not checked: global-memory bounds (a read past an array returns whatever the host
memory holds), the memory model beyond barriers and cp.async waits, timing.
"""
from __future__ import annotations

import argparse
import ctypes
import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass, field

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
EMU_DIR = os.path.join(ROOT, "scripts", "cuda_emu")
SMEM_OPTIN_MAX = 227 * 1024          # sm_90's largest dynamic shared memory per block (opted in)
SMEM_DEFAULT_MAX = 48 * 1024         # without the opt-in attribute


# ----------------------------------------------------------------------------- source rewrite
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
_EXTERN_SHARED = re.compile(r"\bextern\s+__shared__\s+(?:__align__\(\s*\d+\s*\)\s*)?([\w\s]+?)\s*\b(\w+)\s*\[\s*\]\s*;")


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


_STATIC_SHARED = re.compile(r"^(\s*)__shared__\s+([^;]*);", re.M)


def _static_shared(m) -> str:
    """``__shared__ T a[..], b[..];`` -> ``static T a[..], b[..];`` plus a registration of each array, so that
    the emulator poisons it before every block."""
    parts = _split_top(m.group(2), ",")
    names = [re.match(r"(?s).*?\b(\w+)\s*(?:\[[^\]]*\]\s*)*$", parts[0]).group(1)]
    names += [re.match(r"\s*(\w+)", p).group(1) for p in parts[1:]]
    regs = " ".join(f"static emu::SharedStatic emu_shared_{n}({n}, sizeof({n}));" for n in names)
    return f"{m.group(1)}static {m.group(2)}; {regs}"


def rewrite_shared(src: str) -> str:
    """``extern __shared__ T name[];`` -> a pointer to the emulator's dynamic shared memory; a statement
    ``__shared__ T a[..], ...;`` (static shared arrays) -> function-local statics (blocks run one at a time),
    registered for poisoning."""
    src = _EXTERN_SHARED.sub(lambda m: f"{m.group(1)}* const {m.group(2)} = reinterpret_cast<{m.group(1)}*>"
                                       f"(emu::dyn_smem);", src)
    return _STATIC_SHARED.sub(_static_shared, src)


def rewrite(src: str) -> str:
    return rewrite_shared(rewrite_asm(src))


# ----------------------------------------------------------------------------- build
_ERR_LEN = 2000


def build(code: str, expression: str, include_dirs: list):
    """The ctypes entry point running kernel ``expression`` of source text ``code`` in the emulator (one g++
    build per source text and expression, cached in the temp directory by content)."""
    files = {}
    for d in include_dirs:
        for n in sorted(os.listdir(d)):
            if n.endswith((".cuh", ".h")) or (n.endswith(".cu") and f'#include "{n}"' in code):   # a source may include
                                                                                            # another's kernels
                with open(os.path.join(d, n)) as f:
                    files.setdefault(n, rewrite(f.read()))
    files["kernel_source.cu"] = rewrite(code)
    main = (
        '#include <cstdio>\n#include "emu.h"\n#include "kernel_source.cu"\n'
        'extern "C" int emu_run(unsigned gx, unsigned gy, unsigned gz, unsigned block, unsigned smem, void** args,\n'
        '                       const int* sizes, int n, char* err, int err_len) {\n'
        f"    try {{\n        emu::check_args(&{expression}, sizes, n);\n"
        f"        emu::launch({{gx, gy, gz}}, block, smem, [&] {{ emu::call(&{expression}, args); }});\n"
        "        return 0;\n"
        '    } catch (const std::exception& x) { snprintf(err, err_len, "%s", x.what()); return 1; }\n}\n')
    with open(os.path.join(EMU_DIR, "emu.h")) as f:
        emu_h = f.read()
    key = hashlib.sha1("\0".join([main, emu_h] + [f"{k}\0{files[k]}" for k in sorted(files)]).encode()).hexdigest()[:16]
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
            raise RuntimeError(f"g++ failed on {expression}:\n{r.stderr[:6000]}")
        os.replace(lib + ".tmp", lib)
        print(f"  built {expression} in {time.time() - t:.0f} s", flush=True)
    f = ctypes.CDLL(lib).emu_run
    f.argtypes = [ctypes.c_uint] * 5 + [ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int), ctypes.c_int,
                                        ctypes.c_char_p, ctypes.c_int]
    f.restype = ctypes.c_int
    return f


# ----------------------------------------------------------------------------- the stand-in cupy
class HostArray(np.ndarray):
    """A NumPy array standing in for a cupy.ndarray (``.data.ptr``, ``.get()``)."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    def get(self):
        return np.array(self)


def _alloc(shape, dtype) -> HostArray:
    """An uninitialised array whose data starts on a 256-byte boundary (as CuPy's allocations do)."""
    dtype = np.dtype(dtype)
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n + 256, np.uint8)
    off = -raw.__array_interface__["data"][0] % 256
    return raw[off:off + n].view(dtype).reshape(shape).view(HostArray)


def _copy(a, dtype=None) -> HostArray:
    a = np.asarray(a, dtype=dtype)
    out = _alloc(a.shape, a.dtype)
    out[...] = a
    return out


def _same_or_copy(a, dtype=None, contiguous=False):
    """CuPy's asarray / ascontiguousarray: the array itself when it is already a device array of that dtype
    (and layout), else a copy."""
    if (isinstance(a, HostArray) and (dtype is None or np.dtype(dtype) == a.dtype)
            and (not contiguous or a.flags.c_contiguous)):
        return a
    return _copy(a, dtype)


def _ascontiguousarray(a, dtype=None):
    """CuPy's ascontiguousarray takes device arrays only (a NumPy array is a TypeError there, as here)."""
    if not isinstance(a, HostArray):
        raise TypeError(f"Argument 'a' has incorrect type (expected cupy._core.core._ndarray_base, got "
                        f"{type(a).__module__}.{type(a).__name__})")
    return _same_or_copy(a, dtype, contiguous=True)


def _wrap(fn):
    """A NumPy function whose ndarray results come back as device arrays."""
    def f(*args, **kwargs):
        r = fn(*args, **kwargs)
        return r.view(HostArray) if type(r) is np.ndarray else r
    return f


class EmuKernel:
    """A RawKernel whose launches run in the emulator, checked as the driver would check them."""

    def __init__(self, expression, entry):
        self.expression, self.entry = expression, entry
        self.max_dynamic_shared_size_bytes = 0

    def _arg(self, a):
        if isinstance(a, np.ndarray):
            return ctypes.c_void_p(a.__array_interface__["data"][0])
        if isinstance(a, np.generic):
            return np.ctypeslib.as_ctypes_type(a.dtype)(a.item())
        if isinstance(a, bool):
            return ctypes.c_bool(a)
        if isinstance(a, int):                 # CuPy passes Python ints as int64, floats as float64
            return ctypes.c_int64(a)
        if isinstance(a, float):
            return ctypes.c_double(a)
        raise TypeError(f"{self.expression}: argument of type {type(a).__name__}")

    def __call__(self, grid, block, args, shared_mem=0):
        grid = tuple(int(x) for x in grid) + (1,) * (3 - len(grid))
        block = tuple(int(x) for x in block)
        if any(b != 1 for b in block[1:]):
            raise ValueError(f"{self.expression}: the emulator runs one-dimensional blocks only, got {block}")
        limit = max(SMEM_DEFAULT_MAX, min(self.max_dynamic_shared_size_bytes, SMEM_OPTIN_MAX))
        if shared_mem > limit:
            raise RuntimeError(f"{self.expression}: {shared_mem} bytes of dynamic shared memory, the launch allows "
                               f"{limit} (max_dynamic_shared_size_bytes {self.max_dynamic_shared_size_bytes})")
        vals = [self._arg(a) for a in args]
        ptrs = (ctypes.c_void_p * max(1, len(vals)))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in vals])
        sizes = (ctypes.c_int * max(1, len(vals)))(*[ctypes.sizeof(v) for v in vals])
        err = ctypes.create_string_buffer(_ERR_LEN)
        if self.entry(*grid, block[0], int(shared_mem), ptrs, sizes, len(vals), err, _ERR_LEN):
            raise RuntimeError(f"{self.expression} failed in the emulator: {err.value.decode()}")


class RawModule:
    """cupy.RawModule: kernels built on demand, one per name expression."""

    def __init__(self, code, options=(), name_expressions=None, **_):
        self.code = code
        self.names = None if name_expressions is None else tuple(name_expressions)
        self.include_dirs = [o[2:] for o in options if o.startswith("-I")]
        self._kernels = {}

    def compile(self, *_, **__):
        for e in self.names or ():
            self.get_function(e)

    def get_function(self, name):
        if self.names is not None and name not in self.names:
            raise KeyError(f"{name!r} is not among the module's name expressions")
        if name not in self._kernels:
            self._kernels[name] = EmuKernel(name, build(self.code, name, self.include_dirs))
        return self._kernels[name]


def fake_cupy() -> types.ModuleType:
    cp = types.ModuleType("cupy")
    cp.__version__ = "cpu-emulator"
    cp.ndarray = HostArray
    cp.empty = lambda shape, dtype=np.float64: _alloc(shape, dtype)
    cp.zeros = lambda shape, dtype=np.float64: _copy(np.zeros(shape, dtype))
    cp.ones = lambda shape, dtype=np.float64: _copy(np.ones(shape, dtype))
    cp.full = lambda shape, v, dtype=None: _copy(np.full(shape, v, dtype))
    cp.empty_like = lambda a, dtype=None: _alloc(np.shape(a), dtype or a.dtype)
    cp.asarray = lambda a, dtype=None: _same_or_copy(a, dtype)
    cp.ascontiguousarray = _ascontiguousarray
    cp.asnumpy = lambda a: np.array(a)
    cp.RawModule = RawModule
    cp.RawKernel = lambda code, name, options=(), **_: RawModule(code, options).get_function(name)
    device = types.SimpleNamespace(id=0, synchronize=lambda: None, attributes={"MultiProcessorCount": 132},
                                   compute_capability="90")
    props = {"name": b"CPU emulator", "major": 9, "minor": 0, "multiProcessorCount": 132,
             "sharedMemPerBlockOptin": SMEM_OPTIN_MAX}
    event = lambda *_, **__: types.SimpleNamespace(record=lambda *_: None, synchronize=lambda: None)   # noqa: E731
    cp.cuda = types.SimpleNamespace(
        Event=event, get_elapsed_time=lambda start, end: 0.0,      # (no timing here: scripts run, their times are 0)
        Device=lambda *_: device,
        get_current_stream=lambda: types.SimpleNamespace(ptr=0),
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1, getDevice=lambda: 0,
                                      getDeviceProperties=lambda *_: props,
                                      memsetAsync=lambda ptr, value, size, stream: ctypes.memset(ptr, value, size)))

    def __getattr__(name):                    # everything else: NumPy's, on device arrays
        fn = getattr(np, name)
        return _wrap(fn) if callable(fn) and not isinstance(fn, type) else fn
    cp.__getattr__ = __getattr__
    return cp


# ----------------------------------------------------------------------------- families
@dataclass
class Result:
    ok: bool
    errors: dict                 # name -> relative error
    tol: float
    note: str = ""


def _load_test_module(name: str):
    """tests/<name>.py as a module (the tests directory is not a package: on sys.path, as pytest puts it, for the
    modules the tests share -- numba_cases, script_modules)."""
    if name in sys.modules:
        return sys.modules[name]
    if os.path.join(ROOT, "tests") not in sys.path:
        sys.path.insert(0, os.path.join(ROOT, "tests"))
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tests", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def run_softmax(variant, dtype, lead, T, Dk, Dv, causal, full_mantissa, seed) -> Result:
    """A registered cupy softmax variant, forward and backward, against the float64 explicit reference.
    full_mantissa: float32 inputs keep every mantissa bit (else they are float16 values)."""
    from workbench import registry
    from workbench.backends import poisoned
    from workbench.check import rel_error
    from workbench.inputs import random_inputs
    from workbench.reference import softmax as ref
    rng = np.random.default_rng(seed)
    q, k, v = random_inputs("softmax", lead=lead, T=T, Dk=Dk, Dv=Dv, dtype="float64", seed=seed)
    do = rng.standard_normal((*lead, T, Dv))
    rnd = np.float32 if full_mantissa else np.float16
    q, k, v, do = (a.astype(rnd).astype(np.float64) for a in (q, k, v, do))
    N = int(np.prod(lead))
    flat = [_copy(a.reshape(N, T, -1), dtype) for a in (q, k, v, do)]
    scale = 1.0 / np.sqrt(Dk)
    var = registry.get("softmax", "cupy", variant)
    with poisoned():
        out, ctx = var.forward(*flat[:3], causal=causal, scale=scale)
        grads = var.backward(ctx, flat[3])
    o_ref, rctx = ref.explicit_forward(q, k, v, causal=causal, scale=scale)
    g_ref = ref.explicit_backward(rctx, do)
    errs = {name: rel_error(np.asarray(x, np.float64).reshape(r.shape), r)
            for name, x, r in zip(("o", "dq", "dk", "dv"), (out,) + tuple(grads), (o_ref,) + tuple(g_ref))}
    tol = registry.TOLERANCE["tf32" if "tf32" in var.tags else dtype]
    return Result(all(np.isfinite(e) and e < tol for e in errs.values()), errs, tol)


def run_chunked_mma(dtype, split, cu, dk, dv, mode, L, stages=1, dkdv="fused") -> Result:
    """The tensor-core chunk core (N = 1), forward and every gradient, through the GPU test's run_case and
    tolerance (mode: linear, decayed or noncausal, as that test's modes; causal cases carry an initial state
    and a final-state gradient; stages: the chunk walk's load pipeline, 2 = cupy:chunked_mma_db; dkdv: the dk/dv
    walkers at head dims (64, 64), _chunked_mma.DKDV_MODES)."""
    t = _load_test_module("test_cupy_chunked_mma")
    causal = mode != "noncausal"
    res = t.run_case(dtype, split, 1, list(cu), dk, dv, mode == "decayed", causal, L, with_state=causal, seed=L,
                     stages=stages, dkdv=dkdv)
    tol = t.TOL[(dtype, split)]
    bad = [f"{n}: {w}" for n, (e, w) in res.items() if not e <= tol]
    return Result(not bad, {n: e for n, (e, _) in res.items()}, tol, "; ".join(bad))


def run_zeros_variant(impl, dtype, lead, T, Dk, Dv, causal, n_gates) -> Result:
    """A cupy ZeroS variant on the tensor-core core through the public API (wb.vjp), output and every gradient
    against the float64 reference, through tests/test_cupy_zeros_mma.py's _vjp_errors and tolerances."""
    t = _load_test_module("test_cupy_zeros_mma")
    tol = {(i, d): x for i, d, x in t.CASES}[(impl, dtype)]
    errs = t._vjp_errors(impl, dtype, lead, T, Dk, Dv, causal, n_gates)
    return Result(all(e < tol for e in errs.values()), errs, tol)


def run_test_function(module, function, kwargs) -> Result:
    """A GPU test function of tests/<module>.py, called with kwargs (its parameters): passes unless it raises."""
    getattr(_load_test_module(module), function)(**kwargs)
    return Result(True, {}, float("nan"))


def run_check_cell(op, variant, dtype, lead, T, Dk, Dv, causal, state, packed, seed=0, log_decay_range=None) -> Result:
    """A registered cupy variant of any op through the public API on one cell of ``cli.py check``
    (workbench.check.compare: the float64 explicit reference, the variant's own tolerance), the output, every
    gradient and, with ``state``, the final state and the initial state's gradient."""
    from workbench import check
    r = check.compare(op, f"cupy:{variant}", lead, T, Dk, Dv, dtype, causal=causal, state=state, packed=packed,
                      seed=seed, log_decay_range=log_decay_range)
    tol, ok = r.pop("tol"), r.pop("ok")
    r.pop("seconds")
    floors = r.pop("floors")
    return Result(ok, dict(r, **{f"floor {n}": f for n, f in floors.items()}), tol)


RUNNERS = {"softmax": run_softmax, "chunked_mma": run_chunked_mma, "zeros_variant": run_zeros_variant,
           "test_function": run_test_function, "check_cell": run_check_cell}


# ----------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class Case:
    family: str                  # the kernel module it checks
    label: str
    runner: str                  # a key of RUNNERS
    params: dict = field(hash=False)


def _softmax(label, variant, dtype, lead, T, Dk, Dv, causal, full_mantissa=False):
    return Case("softmax", label, "softmax", dict(variant=variant, dtype=dtype, lead=lead, T=T, Dk=Dk, Dv=Dv,
                                                  causal=causal, full_mantissa=full_mantissa, seed=len(label)))


def _chunked(dtype, split, cu, dk, dv, mode, L, stages=1, dkdv="fused"):
    label = (f"chunked_mma{'_db' if stages == 2 else ''}{'' if dkdv == 'fused' else '_dkdv-' + dkdv} {dtype}/{split} "
             f"cu={','.join(map(str, cu))} {dk}x{dv} {mode} L={L}")
    return Case("chunked_mma", label, "chunked_mma", dict(dtype=dtype, split=split, cu=cu, dk=dk, dv=dv, mode=mode,
                                                          L=L, stages=stages, dkdv=dkdv))


def _zeros(impl, dtype, lead, T, Dk, Dv, causal, n_gates):
    label = (f"zeros cupy:{impl} {dtype} {'x'.join(map(str, lead))} T={T} {Dk}x{Dv} causal={causal} "
             f"gates={n_gates}")
    return Case("zeros", label, "zeros_variant", dict(impl=impl, dtype=dtype, lead=lead, T=T, Dk=Dk, Dv=Dv,
                                                      causal=causal, n_gates=n_gates))


def _test_case(family, module, function, **kwargs):
    label = f"{family} {function}(" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")"
    return Case(family, label, "test_function", dict(module=module, function=function, kwargs=kwargs))


def _zeros_test(function, **kwargs):
    return _test_case("zeros", "test_cupy_zeros_mma", function, **kwargs)


def _cells() -> list:
    """One check cell per registered cupy variant of every op and emulated dtype: causal (with an initial state,
    the final state and packed sequences where the variant implements them), and not causal in the first
    dtype; T = 70 crosses a 64-token chunk or tile, head dims 16 x 24."""
    from workbench import registry
    from workbench.check import spec
    import kernels.cupy  # noqa: F401  (registers the cupy variants)
    out = []
    for op in registry.OPS:
        for v in registry.variants(op):
            if v.backend != "cupy":
                continue
            for i, dtype in enumerate(d for d in v.dtypes if d != "bfloat16"):
                for causal in (True, False) if i == 0 and op != "decayed" else (True,):
                    if not causal and v.unsupported_reason({"causal": False}, spec(op).shapes((2,), 70, 16, 24)):
                        continue                  # causal-only variants (the check sweep leaves such cells out)
                    state, packed = causal and "state" in v.features, causal and "packed" in v.features
                    label = (f"{op} cell cupy:{v.name} {dtype} T=70 16x24 causal={causal}"
                             + " state" * state + " packed" * packed)
                    out.append(Case(op, label, "check_cell", dict(op=op, variant=v.name, dtype=dtype, lead=(2,),
                                                                  T=70, Dk=16, Dv=24, causal=causal, state=state,
                                                                  packed=packed)))
                if (i == 0 or v.default) and op == "decayed" and v.prepare is not None:
                    # a causal-only op's cells all carry a state: one without, for the variant's prepared path
                    # (registry.Variant.prepare runs only without a state)
                    out.append(Case(op, f"{op} cell cupy:{v.name} {dtype} T=70 16x24 causal=True prepared",
                                    "check_cell", dict(op=op, variant=v.name, dtype=dtype, lead=(2,), T=70, Dk=16,
                                                       Dv=24, causal=True, state=False, packed=False)))
            if v.leading_dims and set(v.dtypes) - {"bfloat16"}:   # leading dims reach the kernels unflattened
                dtype = next(d for d in v.dtypes if d != "bfloat16")
                state = "state" in v.features
                out.append(Case(op, f"{op} cell cupy:{v.name} {dtype} leading dims 2x3 T=70 16x24 causal=True"
                                + " state" * state, "check_cell",
                                dict(op=op, variant=v.name, dtype=dtype, lead=(2, 3), T=70, Dk=16, Dv=24, causal=True,
                                     state=state, packed=False)))
    # float16 decayed with an initial state and log decays down to -30 (seed 1: a chunk starting near -30): the
    # backward's e^{b} weights relative to the chunk's first row (tc weight_base); before, d init.S came out 0
    # (relative error 1.0, H200 callI and here)
    for name in ("chunked_mma", "chunked_mma_dqa", "chunked_mma_dqr"):
        out.append(Case("decayed", f"decayed cell cupy:{name} float16 T=1024 lead 1x2 g in [-30, 0] seed 1 state",
                        "check_cell", dict(op="decayed", variant=name, dtype="float16", lead=(1, 2), T=1024, Dk=64,
                                           Dv=64, causal=True, state=True, packed=False, seed=1,
                                           log_decay_range=(-30.0, 0.0))))
    # bfloat16 decayed, the anchored core (hi + lo state operands) on cells it missed before them: state + packed at
    # T = 193, g in [-1, 0) (test_gpu_state's cell: 2.05e-2 on the GPU and here before, the model 8.6e-3 after), an
    # initial state with g in [-30, 0] at T = 1024 (test_bfloat16_decayed_long: 4.0e-2 on the GPU, callI)
    for lead, T, seed, rng, packed in (((2,), 193, 0, (-1.0, -0.01), True), ((2,), 193, 1, (-1.0, -0.01), True),
                                       ((1, 2), 1024, 0, (-30.0, 0.0), False)) if BF16 else ():
        out.append(Case("decayed", f"decayed cell cupy:chunked_mma_dqa bfloat16 T={T} lead {'x'.join(map(str, lead))} "
                                   f"g in [{rng[0]:g}, {rng[1]:g}] seed {seed} state" + " packed" * packed,
                        "check_cell", dict(op="decayed", variant="chunked_mma_dqa", dtype="bfloat16", lead=lead, T=T,
                                           Dk=64, Dv=64, causal=True, state=True, packed=packed, seed=seed,
                                           log_decay_range=rng)))
    return out


def _test_grid(module: str, function: str) -> list:
    """Every parameter combination of a test function's ``pytest.mark.parametrize`` marks, as kwargs (those
    with a bfloat16 value left out: not emulated; and those with a merge-bound test's ``group`` above 0: the
    emulator's arrays take one allocation per output at any group bound, so they would repeat group 0's case)."""
    combos = [{}]
    for m in getattr(getattr(_load_test_module(module), function), "pytestmark", []):
        if m.name != "parametrize":
            continue
        names, values = m.args[0], m.args[1]
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
        combos = [{**c, **dict(zip(names, v if len(names) > 1 else (v,)))} for c in combos for v in values]
    return [c for c in combos if "bfloat16" not in c.values() and not c.get("group")]


SOFTMAX_CASES = [
    _softmax("emulator self-check: flash_mma (GPU-verified kernels)", "flash_mma", "float16", (1,), 70, 64, 64, True)]
for _causal in (True, False):
    SOFTMAX_CASES += [
        _softmax(f"fa2 fp16 T=70 D=64 causal={_causal}", "fa2", "float16", (2,), 70, 64, 64, _causal),
        _softmax(f"fa2_3xtf32 T=70 D=64 causal={_causal}", "fa2_3xtf32", "float32", (1,), 70, 64, 64, _causal, True),
        _softmax(f"fa2_tf32 T=70 D=64 causal={_causal}", "fa2_tf32", "float32", (1,), 70, 64, 64, _causal, True)]
SOFTMAX_CASES += [
    _softmax("fa2 fp16 T=1", "fa2", "float16", (2,), 1, 64, 64, True),
    _softmax("fa2 fp16 T=200 Dk=Dv=128", "fa2", "float16", (1,), 200, 128, 128, True),
    _softmax("fa2 fp16 T=130 Dk=16 Dv=24 (bucket 32)", "fa2", "float16", (2,), 130, 16, 24, False),
    _softmax("fa2 fp16 T=67 Dk=5 Dv=7 (plain loads)", "fa2", "float16", (1,), 67, 5, 7, True),
    _softmax("fa2 fp16 T=150 D=80 (bucket 128)", "fa2", "float16", (1,), 150, 80, 80, False),
    _softmax("fa2_det fp16 T=70 D=64", "fa2_det", "float16", (1,), 70, 64, 64, True),
    _softmax("fa2_3xtf32 T=150 Dk=Dv=128", "fa2_3xtf32", "float32", (1,), 150, 128, 128, True, True),
    _softmax("fa2_3xtf32 T=130 Dk=32 Dv=24", "fa2_3xtf32", "float32", (1,), 130, 32, 24, False, True),
    _softmax("fa2_tf32 T=150 Dk=Dv=128", "fa2_tf32", "float32", (1,), 150, 128, 128, False, True)]
# T <= 64 (FA2_KEY_BLOCK): fa2_bwd's DIRECT instantiation alone (D formed in the block, dq stored, no pre / post)
SOFTMAX_CASES += [
    _softmax(f"fa2 direct fp16 T=64 D=64 causal={_c}", "fa2", "float16", (2,), 64, 64, 64, _c) for _c in (True, False)]
SOFTMAX_CASES += [
    _softmax("fa2 direct fp16 T=45 Dk=5 Dv=7, plain loads", "fa2", "float16", (1,), 45, 5, 7, True),
    _softmax("fa2 direct fp16 T=50 Dk=Dv=128 (2 query tiles)", "fa2", "float16", (1,), 50, 128, 128, False),
    _softmax("fa2_3xtf32 direct T=64 D=64", "fa2_3xtf32", "float32", (2,), 64, 64, 64, True, True),
    _softmax("fa2_3xtf32 direct T=40 Dk=Dv=128 (3 query tiles)", "fa2_3xtf32", "float32", (1,), 40, 128, 128, False,
             True)]

# the one-launch backward (fa2_bwd_one: cupy:fa2_one at every T above 64, cupy:fa2 up to FA2_ONE_LAUNCH_MAX_T) and the
# atomic three-launch form (cupy:fa2_atomic at every T; cupy:fa2 above the bound)
SOFTMAX_CASES += [
    _softmax(f"fa2_one fp16 T=200 D=64 causal={_c}", "fa2_one", "float16", (1,), 200, 64, 64, _c) for _c in (True, False)]
SOFTMAX_CASES += [
    _softmax("fa2_one fp16 T=65 Dk=5 Dv=7 (two tiles, plain loads)", "fa2_one", "float16", (2,), 65, 5, 7, True),
    _softmax(f"fa2_atomic fp16 T=130 Dk=16 Dv=24 (bucket 32)", "fa2_atomic", "float16", (1,), 130, 16, 24, True),
    _softmax(f"fa2_atomic fp16 T=70 D=64 causal=False", "fa2_atomic", "float16", (2,), 70, 64, 64, False),
    _softmax("fa2_cast fp16 T=65 Dk=5 Dv=7 (two tiles, plain loads)", "fa2_cast", "float16", (2,), 65, 5, 7, True),
    _softmax("fa2_tail bf16 T=65 Dk=5 Dv=7 (two tiles, plain loads, scalar cast)", "fa2_tail", "bfloat16", (2,), 65, 5,
             7, True),
    Case("softmax", "softmax test_fa2_backward_launches()", "test_function",
         dict(module="test_cupy_softmax", function="test_fa2_backward_launches", kwargs={}))]

# the dq cast in the key blocks (fa2_bwd_cast: per query tile; fa2_bwd_tail: after each block's adds), causal and not,
# one tile bucket 32
SOFTMAX_CASES += [_softmax(f"{_v} fp16 T=200 D=64 causal={_c}", _v, "float16", (2,) if _c else (1,), 200, 64, 64, _c)
                  for _v in ("fa2_cast", "fa2_tail") for _c in (True, False)]
SOFTMAX_CASES += [_softmax(f"{_v} fp16 T=130 Dk=16 Dv=24 (bucket 32)", _v, "float16", (1,), 130, 16, 24, False)
                  for _v in ("fa2_cast", "fa2_tail")]

# packed sequences (cu_seqlens, inputs.packed_lengths) on the fa2 kernels and fa2_det's backward: check cells and
# the GPU test's packed-against-per-sequence comparison
SOFTMAX_CASES += [Case("softmax", f"softmax packed cell cupy:{var} {dt} T={T} {dk}x{dv} causal={c}", "check_cell",
                       dict(op="softmax", variant=var, dtype=dt, lead=(2,), T=T, Dk=dk, Dv=dv, causal=c, state=False,
                            packed=True)) for var, dt, T, dk, dv, c in (
    ("fa2", "float16", 200, 96, 40, True), ("fa2", "float16", 200, 96, 40, False),
    ("fa2_det", "float16", 130, 64, 64, True), ("fa2_det", "float16", 67, 16, 24, False),
    ("fa2_3xtf32", "float32", 200, 64, 64, False), ("fa2_tf32", "float32", 130, 128, 128, True),
    ("fa2", "float16", 64, 64, 64, True), ("fa2_3xtf32", "float32", 60, 32, 24, False),      # these two: DIRECT
    ("fa2_one", "float16", 200, 64, 64, True), ("fa2_one", "float16", 130, 16, 24, False),
    ("fa2_atomic", "float16", 200, 64, 64, True), ("fa2_cast", "float16", 200, 64, 64, True),
    ("fa2_tail", "float16", 200, 64, 64, True))]
SOFTMAX_CASES += [Case("softmax", f"softmax test_fa2_above_the_merge_bound(variant={var})", "test_function",
                       dict(module="test_cupy_softmax", function="test_fa2_above_the_merge_bound",
                            kwargs=dict(variant=var, group=0))) for var in ("fa2", "fa2_3xtf32")]
SOFTMAX_CASES += [Case("softmax", f"softmax test_fa2_packed_equals_one_call_per_sequence(variant={var})", "test_function",
                       dict(module="test_cupy_softmax", function="test_fa2_packed_equals_one_call_per_sequence",
                            kwargs=dict(variant=var))) for var in ("fa2", "fa2_det", "fa2_atomic")]
SOFTMAX_CASES += [Case("softmax", f"softmax test_fa2_packed_refusals(D={D})", "test_function",
                       dict(module="test_cupy_softmax", function="test_fa2_packed_refusals",
                            kwargs=dict(D=D, cu=cu, match=match)))
                  for D, cu, match in ((200, (0, 4, 10), "cu_seqlens.*head dims up to 128"),
                                       (16, (0, 4, 4, 10), "zero-length sequence"))]

# chunked_mma: every storage type and split the emulator runs x every mode x segment lengths.  Shapes: packed
# T = 130 (sequences of 1, 63, 1, 65 tokens: chunk edges, one-token sequences) and T = 130 in one sequence
# (segments of 3, 1 and 2 chunks), each with every L; head dims 80 x 72 (128-wide tiles, separate dk and dv
# kernels), 96 x 40 (mixed), 5 x 7 (element-wise loads) with L = 0 and 1; T = 1 (every L is one segment).
CHUNKED_SHAPES = [((0, 1, 64, 65, 130), 64, 64, (0, 1, 2)), ((0, 130), 32, 48, (0, 1, 2)),
                  ((0, 97), 80, 72, (0, 1)), ((0, 63, 130), 96, 40, (0, 1)), ((0, 70), 5, 7, (0, 1)),
                  ((0, 1), 64, 64, (0,))]
CHUNKED_CASES = [_chunked(dt, split, cu, dk, dv, mode, L)
                 for dt, split in (("float16", 1), ("float32", 3), ("float32", 1))
                 for cu, dk, dv, Ls in CHUNKED_SHAPES for mode in ("linear", "decayed", "noncausal") for L in Ls]
# the double-buffered walk (stages 2, cupy:chunked_mma_db): walks of 1 to 5 chunks (T = 300 in one sequence
# with L = 0; segments of 2 with L = 2), packed sequences with chunk-edge lengths, element-wise loads, the
# 128-wide tiles (separate dk and dv kernels; float32 there runs them with one stage: two do not fit)
CHUNKED_DB_CASES = [_chunked(dt, split, cu, dk, dv, mode, L, stages=2) for dt, split, cu, dk, dv, mode, L in (
    ("float16", 1, (0, 300), 64, 64, "linear", 0), ("float16", 1, (0, 300), 64, 64, "decayed", 2),
    ("float16", 1, (0, 1, 64, 65, 130), 64, 64, "decayed", 0), ("float16", 1, (0, 130), 32, 48, "noncausal", 1),
    ("float16", 1, (0, 97), 80, 72, "linear", 0), ("float16", 1, (0, 70), 5, 7, "decayed", 1),
    ("float32", 3, (0, 300), 64, 64, "decayed", 0), ("float32", 3, (0, 1, 64, 65, 130), 64, 64, "linear", 1),
    ("float32", 3, (0, 63, 130), 96, 40, "linear", 0), ("float32", 3, (0, 130), 32, 48, "noncausal", 2),
    ("float32", 1, (0, 200), 64, 64, "decayed", 2))]
# the other dk/dv walkers at head dims (64, 64) (_chunked_mma.DKDV_MODES: "split" = the dk and dv kernels apart,
# "wide", "roles" = the 8-warp fused kernels): walks of 1 to 5 chunks with the initial state's gradient written by the walker
# (L = 0) and through the segment scan (L = 2), packed chunk-edge lengths, element-wise loads (5 x 7), not causal
CHUNKED_DKDV_CASES = [_chunked(dt, split, cu, dk, dv, mode, L, dkdv=m)
                      for m in ("split", "wide", "roles", "dqfold", "dqrev", "dqrev_roles")
                      for dt, split, cu, dk, dv, mode, L in (
    ("float16", 1, (0, 300), 64, 64, "decayed", 0), ("float16", 1, (0, 300), 64, 64, "linear", 2),
    ("float16", 1, (0, 1, 64, 65, 130), 64, 64, "decayed", 1), ("float16", 1, (0, 70), 5, 7, "linear", 0),
    ("float16", 1, (0, 130), 32, 48, "noncausal", 1),
    ("float32", 3, (0, 300), 64, 64, "decayed", 2), ("float32", 3, (0, 1, 64, 65, 130), 64, 64, "linear", 0),
    ("float32", 1, (0, 130), 32, 48, "decayed", 0))]
# dq folded into the dk/dv walk ("dqfold", cupy:chunked_mma_dqf) beyond the cases above: one token, Dk != Dv within
# the 64-wide tiles, three segments of a walk with a partial last chunk, packed sequences through the segment scan
CHUNKED_DKDV_CASES += [_chunked(dt, split, cu, dk, dv, mode, L, dkdv="dqfold") for dt, split, cu, dk, dv, mode, L in (
    ("float16", 1, (0, 1), 64, 64, "decayed", 0), ("float32", 3, (0, 1), 64, 64, "linear", 0),
    ("float16", 1, (0, 150), 48, 24, "decayed", 1), ("float32", 3, (0, 150), 24, 48, "decayed", 1),
    ("float16", 1, (0, 63, 191), 64, 40, "linear", 1), ("float32", 3, (0, 1, 64, 65, 130), 64, 64, "decayed", 2))]
CHUNKED_DKDV_CASES += [_chunked(dt, split, cu, dk, dv, mode, L, stages=2, dkdv="dqfold") for dt, split, cu, dk, dv, mode, L in (
    ("float16", 1, (0, 300), 64, 64, "decayed", 2), ("float32", 3, (0, 1, 64, 65, 130), 64, 64, "linear", 0))]
# the REV segment sums formed in the dq walker ("dqrev", cupy:chunked_mma_dqr; tc_bwd_dq's ESUM) beyond the cases above:
# walks of 1 to 4 chunks per segment with a partial last chunk (T = 300, L = 1, 3, 4), one token, Dk != Dv and odd
# dims inside the 64-wide tiles, element-wise loads, packed chunk-edge lengths, two dk tiles (Dk 96 with Dv 40), both
# stages, float32; 80 x 72 keeps the REV pass (dv beyond REV_IN_DQ_DIMS)
CHUNKED_DKDV_CASES += [_chunked(dt, split, cu, dk, dv, mode, L, stages=st, dkdv="dqrev")
                       for dt, split, cu, dk, dv, mode, L, st in (
    ("float16", 1, (0, 300), 64, 64, "decayed", 3, 1), ("float16", 1, (0, 300), 64, 64, "linear", 4, 1),
    ("float16", 1, (0, 300), 64, 64, "decayed", 1, 2), ("float16", 1, (0, 1), 64, 64, "decayed", 0, 1),
    ("float16", 1, (0, 150), 48, 24, "decayed", 1, 1), ("float16", 1, (0, 70), 5, 7, "decayed", 1, 1),
    ("float16", 1, (0, 63, 191), 96, 40, "decayed", 1, 1), ("float16", 1, (0, 97), 80, 72, "decayed", 1, 1),
    ("float32", 3, (0, 150), 24, 48, "decayed", 1, 1), ("float32", 3, (0, 1, 64, 65, 130), 64, 64, "decayed", 1, 2),
    ("float32", 1, (0, 300), 64, 64, "decayed", 3, 1))]
# d log_decay from chunk anchors ("anchor": the dq-folded walkers + tc_dg from the anchors; bfloat16's core, run here
# in float16): walks of 1 to 5 chunks with the sequence's end at a partial chunk (L = 0), segments of 1 and 2 chunks
# (the anchor of a segment's first chunk: the update done without dSstart), packed chunk-edge lengths (a sequence's
# last chunk takes <dS_T, S_T>), one token, Dk != Dv, both stages, float32; linear (no anchors) and not causal (folds
# nothing: the fused walker) run as "anchor" too
CHUNKED_DKDV_CASES += [_chunked(dt, split, cu, dk, dv, mode, L, stages=st, dkdv="anchor")
                       for dt, split, cu, dk, dv, mode, L, st in (
    ("float16", 1, (0, 300), 64, 64, "decayed", 0, 1), ("float16", 1, (0, 300), 64, 64, "decayed", 2, 1),
    ("float16", 1, (0, 1, 64, 65, 130), 64, 64, "decayed", 1, 1), ("float16", 1, (0, 1), 64, 64, "decayed", 0, 1),
    ("float16", 1, (0, 150), 48, 24, "decayed", 1, 1), ("float16", 1, (0, 300), 64, 64, "decayed", 2, 2),
    ("float32", 3, (0, 1, 64, 65, 130), 64, 64, "decayed", 2, 1), ("float16", 1, (0, 130), 64, 64, "linear", 1, 1),
    ("float16", 1, (0, 130), 32, 48, "noncausal", 1, 1))]

# the kernels on warpgroup MMA (chunked_wgmma.cu): the forward's segment sums ("dqrev_wgs", cupy:chunked_mma_wgs;
# tg_seg_state), the causal forward walker ("dqrev_wg", cupy:chunked_mma_wg; tg_fwd), every walker ("dqrev_wgb") and
# the dk/dv walker alone ("dqrev_wgk"): walks of 1 to 5 chunks with a partial last chunk (whole sequences at L = 0),
# packed chunk-edge lengths, Dk != Dv inside the 64-wide tile, element-wise loads (5 x 7), two dv tiles (64 x 128), the
# totals of a call that is not causal, log decays (the walkers' DECAY instantiations); float32 (the mma.sync kernels,
# the fallback)
CHUNKED_WG_CASES = [_chunked(dt, split, cu, dk, dv, mode, L, dkdv=m)
                    for m in ("dqrev_wgs", "dqrev_wg", "dqrev_wgb", "dqrev_wgk")
                    for dt, split, cu, dk, dv, mode, L in (
    ("float16", 1, (0, 300), 64, 64, "linear", 1), ("float16", 1, (0, 300), 64, 64, "linear", 4),
    ("float16", 1, (0, 300), 64, 64, "linear", 0),
    ("float16", 1, (0, 1, 64, 65, 130), 64, 64, "linear", 1), ("float16", 1, (0, 150), 48, 24, "linear", 2),
    ("float16", 1, (0, 70), 5, 7, "linear", 1), ("float16", 1, (0, 200), 64, 128, "linear", 2),
    ("float16", 1, (0, 130), 32, 48, "noncausal", 1),
    ("float16", 1, (0, 300), 64, 64, "decayed", 2), ("float32", 3, (0, 300), 64, 64, "linear", 2))]
CHUNKED_WG_CASES += [_test_case("chunked_mma", "test_cupy_chunked_mma", "test_wg_launches")]
# xscale (cupy:chunked_mma_wgx): float32 through the float16 walkers with float32 results, every parametrisation
CHUNKED_WG_CASES += [_test_case("chunked_mma", "test_cupy_chunked_mma", "test_xscale_matches_recurrence", **kw)
                     for kw in _test_grid("test_cupy_chunked_mma", "test_xscale_matches_recurrence")]
CHUNKED_WG_CASES += [_test_case("chunked_mma", "test_cupy_chunked_mma", "test_xscale_refuses_what_its_walkers_do_not_take")]
# the pairs walkers' choices (XS_PAIR: load stages, LOWREG) leave every result bit for bit as it was
CHUNKED_WG_CASES += [_test_case("chunked_mma", "test_cupy_chunked_mma",
                                "test_xscale_pair_choices_change_the_schedule_not_the_results")]

# bfloat16 (ml_dtypes), the decayed core with chunk anchors and its state operands as hi + lo pairs (tc::state_pairs,
# docs/kernels/decayed.md "anchor + split-state"): the float16 anchor cases' walks, segment lengths, packing and both
# stages; "dqfold" (the pairs without anchors); linear through "anchor" (no decay: single products, no lo tiles)
BF16 = importlib.util.find_spec("ml_dtypes") is not None
CHUNKED_BF16_CASES = [_chunked("bfloat16", 1, cu, dk, dv, mode, L, stages=st, dkdv=m) for cu, dk, dv, mode, L, st, m in (
    ((0, 300), 64, 64, "decayed", 0, 1, "anchor"), ((0, 300), 64, 64, "decayed", 2, 1, "anchor"),
    ((0, 1, 64, 65, 130), 64, 64, "decayed", 1, 1, "anchor"), ((0, 1), 64, 64, "decayed", 0, 1, "anchor"),
    ((0, 150), 48, 24, "decayed", 1, 1, "anchor"), ((0, 300), 64, 64, "decayed", 2, 2, "anchor"),
    ((0, 1, 64, 65, 130), 64, 64, "decayed", 2, 2, "dqfold"), ((0, 130), 64, 64, "linear", 1, 1, "anchor"),
    ((0, 130), 32, 48, "noncausal", 1, 1, "anchor"),
    ((0, 300), 64, 64, "decayed", 3, 1, "dqrev"), ((0, 1, 64, 65, 130), 48, 24, "decayed", 1, 2, "dqrev"),
    ((0, 300), 64, 64, "linear", 2, 1, "dqrev"))] if BF16 else []

# dqrev against the fused mode on the same inputs, bit-identical o, final state, dq and the rest to rounding (every
# parametrisation but bfloat16's), and where it launches what
CHUNKED_DQREV_TESTS = [_test_case("chunked_mma", "test_cupy_chunked_mma", "test_dqrev_equals_fused_to_rounding", **kw)
                       for kw in _test_grid("test_cupy_chunked_mma", "test_dqrev_equals_fused_to_rounding")]
CHUNKED_DQREV_TESTS += [_test_case("chunked_mma", "test_cupy_chunked_mma", "test_dqrev_launches")]

# float16 and bfloat16 log decays read by the walkers against their float32 cast, bit for bit (every parametrisation)
_G16_TEST = "test_16bit_log_decays_equal_their_float32_cast"
CHUNKED_G16_CASES = [_test_case("chunked_mma", "test_cupy_chunked_mma", _G16_TEST, **kw)
                     for kw in _test_grid("test_cupy_chunked_mma", _G16_TEST)]
# every allocation as above OUTPUTS_MERGE_MAX (the segment sums a per-call temporary), float16 and float32; ZeroS's
# composition and fused default likewise
CHUNKED_G16_CASES += [_zeros_test("test_variant_above_the_merge_bound", **kw)
                      for kw in _test_grid("test_cupy_zeros_mma", "test_variant_above_the_merge_bound")]
_MERGE_TEST = "test_core_above_the_merge_bound_matches_recurrence"
CHUNKED_G16_CASES += [_test_case("chunked_mma", "test_cupy_chunked_mma", _MERGE_TEST, **kw)
                      for kw in _test_grid("test_cupy_chunked_mma", _MERGE_TEST)]
# float16 states beyond the 16-bit range (the walkers' power-of-two sigma, tc::state_to_smem), every parametrisation
_BIG_TEST = "test_float16_states_beyond_the_16bit_range"
CHUNKED_G16_CASES += [_test_case("chunked_mma", "test_cupy_chunked_mma", _BIG_TEST, **kw)
                      for kw in _test_grid("test_cupy_chunked_mma", _BIG_TEST)]

# the 16-bit walkers' factored decay (tc::intra_frags FAST: chunks of small log-decay span) and, beside it in one
# walk, a chunk that takes the exps: every parametrisation
_SPAN_TEST = "test_decays_of_small_span_match_recurrence"
CHUNKED_G16_CASES += [_test_case("chunked_mma", "test_cupy_chunked_mma", _SPAN_TEST, **kw)
                      for kw in _test_grid("test_cupy_chunked_mma", _SPAN_TEST)]

# wgmma: Hopper's warpgroup MMA as kernels/cuda/wgmma.cuh uses it, every form of tests/test_wgmma.py against NumPy
# (the emulator's model of the instruction; the same test on an H100 / H200 checks the hardware)
WGMMA_TESTS = [_test_case("wgmma", "test_wgmma", "test_product_matches_numpy", **kw)
               for kw in _test_grid("test_wgmma", "test_product_matches_numpy")]
WGMMA_TESTS += [_test_case("wgmma", "test_wgmma", "test_product_refuses_other_shapes_and_dtypes")]

# zeros: the ZeroS variants on the tensor-core core (public API; every dtype and split the emulator runs; the
# GPU test's shapes but its T = 4097, one lead dim where it has two; both causal modes and gate counts spread
# over them), then GPU tests called as they are: every parametrisation of the scan and row kernel tests and of
# the extreme-logit variant test, the NaN tests.
ZEROS_CASES = [_zeros(*row) for row in (
    ("chunked_mma", "float32", (2, 3), 37, 5, 7, True, 3),
    ("chunked_mma", "float32", (1,), 1, 64, 64, False, 2),
    ("chunked_mma", "float32", (1,), 130, 64, 64, False, 3),
    ("chunked_mma", "float32", (1,), 200, 80, 48, True, 2),
    ("chunked_mma", "float32", (1,), 70, 128, 80, False, 3),
    ("chunked_mma", "float32", (1,), 65, 32, 128, True, 2),
    ("chunked_mma", "float16", (1,), 1, 64, 64, True, 3),
    ("chunked_mma", "float16", (2, 3), 37, 5, 7, False, 2),
    ("chunked_mma", "float16", (1,), 130, 64, 64, True, 2),
    ("chunked_mma", "float16", (1,), 70, 128, 80, True, 3),
    ("chunked_mma_tf32", "float32", (1,), 130, 64, 64, True, 3),
    ("chunked_mma_tf32", "float32", (1,), 65, 32, 128, False, 2),
    # cupy:chunked_mma_fused2 (dk in the dv walker): dk from parts (2 to 4 dv tiles) or directly (one tile,
    # Dv <= 32), several segments (one chunk each at these N), T = 1, Dk != Dv, head dims 5..128, both dtypes
    # (cupy:chunked_mma_fused3, its kernels but the segment length and the segment-sum pass, the same rows;
    # cupy:chunked_mma_fused4, fused3 with dq from the forward's per-chunk states, the same rows)
    *((impl,) + row for impl in ("chunked_mma_fused2", "chunked_mma_fused3", "chunked_mma_fused4") for row in (
        ("float32", (2, 3), 37, 5, 7, True, 3),
        ("float32", (1,), 130, 64, 64, True, 3),
        ("float32", (1,), 130, 64, 64, False, 2),
        ("float32", (1,), 1, 64, 64, True, 2),
        ("float32", (1,), 200, 80, 48, True, 2),
        ("float32", (1,), 70, 128, 80, False, 3),
        ("float32", (1,), 65, 32, 128, True, 2),
        ("float16", (1,), 1, 64, 64, False, 3),
        ("float16", (2, 3), 37, 5, 7, False, 2),
        ("float16", (1,), 130, 64, 64, True, 2),
        ("float16", (1,), 70, 128, 80, True, 3),
        ("float16", (1,), 100, 48, 32, True, 3))),
    # cupy:chunked_mma_fused4's per-chunk states at an odd dv (element stores, not float2) over several chunks
    ("chunked_mma_fused4", "float32", (2,), 150, 24, 37, True, 3),
    ("chunked_mma_fused4", "float16", (1,), 200, 5, 7, True, 2),
    # the fused variant's forward plans (zeros._FusedPlan): one segment causal (no states) and not causal (the
    # segment sums are the totals), above IN_BLOCK_SCAN_MAX_CHUNKS (the scans apart) with segments chained
    ("chunked_mma_fused", "float16", (1, 1), 64, 64, 64, True, 3),
    ("chunked_mma_fused", "float16", (1,), 64, 64, 64, False, 2),
    ("chunked_mma_fused", "float32", (2,), 300, 32, 40, True, 3),
    ("chunked_mma_fused", "float32", (1,), 300, 32, 40, False, 2))]
ZEROS_GRID_TESTS = ("test_forward_stats", "test_backward_rows", "test_variant_extreme_logits",
                    "test_scans_in_block_or_apart")
# states and packed sequences: a few cells of the GPU test's grid (G and H in one call and apart, not causal
# packed, one token), two calls against one, packed against per-sequence calls, the zero-length refusal
ZEROS_STATE_CASES = [_zeros_test("test_state_and_packed_match_the_reference", impl=impl, dtype=dt, T=T, Dk=dk, Dv=dv,
                                 causal=c, state=st, packed=pk) for impl, dt, T, dk, dv, c, st, pk in (
    ("chunked_mma", "float32", 200, 32, 80, True, True, True),
    ("chunked_mma", "float16", 130, 64, 64, True, True, True),
    ("chunked_mma", "float32", 67, 5, 7, False, False, True),
    ("chunked_mma_tf32", "float32", 1, 64, 64, True, True, False))]
ZEROS_STATE_CASES += [_zeros_test("test_two_calls_equal_one_call", impl="chunked_mma", dtype=dt, split=split)
                      for dt, split in (("float32", 63), ("float16", 65))]
# walks of several chunks (the cases above have one chunk per segment at their small N): the fused backward's
# in-walk folds, against the chunked float64 reference at T = 1000
ZEROS_STATE_CASES += [_zeros_test("test_fused_segment_lengths", impl=impl, dtype=dt, tol=tol, L=L, causal=c)
                      for impl in ("chunked_mma_fused2", "chunked_mma_fused3", "chunked_mma_fused4")
                      for dt, tol, L, c in (("float32", 1e-4, 0, True), ("float16", 2e-2, 3, True),
                                            ("float32", 1e-4, 3, False))]
ZEROS_STATE_CASES += [_zeros_test("test_fused3_wave_segments", dtype=dt, tol=tol, impl=impl)
                      for impl in ("chunked_mma_fused3", "chunked_mma_fused4")
                      for dt, tol in (("float32", 1e-4), ("float16", 2e-2))]
ZEROS_STATE_CASES += [_zeros_test("test_fused2_wide_walks", impl=impl, dtype=dt, tol=tol)
                      for impl in ("chunked_mma_fused2", "chunked_mma_fused3", "chunked_mma_fused4")
                      for dt, tol in (("float32", 1e-4), ("float16", 2e-2))]
ZEROS_STATE_CASES += [_zeros_test("test_packed_equals_one_call_per_sequence", impl="chunked_mma", dtype="float16"),
                      _zeros_test("test_zero_length_sequence_is_refused")]
ZEROS_TESTS = ("test_forward_stats_nan", "test_variant_nan_in_s_reaches_later_rows_only")
# steps: the step kernels' GPU tests (tests/test_steps_kernel.py) called as they are, every parametrisation
# (each op x shape x dtype, each block geometry forced, the extreme values)
STEPS_TESTS = ("test_kernel_steps_equal_the_float64_op", "test_every_geometry", "test_kernel_steps_extreme_values")


def cases() -> list:
    """Every case, in running order (the zeros grids read from its test file's parametrize marks)."""
    zeros_tests = [_zeros_test(f, **kw) for f in ZEROS_GRID_TESTS for kw in _test_grid("test_cupy_zeros_mma", f)]
    steps_tests = [_test_case("steps", "test_steps_kernel", f, **kw) for f in STEPS_TESTS
                   for kw in _test_grid("test_steps_kernel", f)]
    return (SOFTMAX_CASES + CHUNKED_CASES + CHUNKED_DB_CASES + CHUNKED_DKDV_CASES + CHUNKED_BF16_CASES
            + CHUNKED_G16_CASES + CHUNKED_DQREV_TESTS + WGMMA_TESTS + CHUNKED_WG_CASES + ZEROS_CASES
            + zeros_tests + [_zeros_test(f) for f in ZEROS_TESTS] + ZEROS_STATE_CASES + steps_tests + _cells())


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-k", action="append", default=[], help="only cases whose label contains this text")
    ap.add_argument("--list", action="store_true", help="print the selected case labels and exit")
    a = ap.parse_args(argv)
    chosen = [c for c in cases() if not a.k or any(k in c.label for k in a.k)]
    if a.list:
        print("\n".join(c.label for c in chosen))
        return 0 if chosen else 1
    if not chosen:
        print("no case matches", a.k)
        return 1
    sys.modules["cupy"] = fake_cupy()
    bad = 0
    for c in chosen:
        t = time.time()
        try:
            r = RUNNERS[c.runner](**c.params)
        except Exception as e:                 # a launch the emulator refused, a failed build: the case fails
            r = Result(False, {}, float("nan"), f"{type(e).__name__}: {e}")
        bad += not r.ok
        errs = " ".join(f"{n} {e:.1e}" for n, e in r.errors.items()) + (f" (tol {r.tol:.0e})" if r.errors else "")
        print(f"{'ok  ' if r.ok else 'FAIL'} {c.label}: {errs} ({time.time() - t:.0f} s)"
              + (f"\n     {r.note}" if r.note else ""), flush=True)
    print(f"{len(chosen) - bad} of {len(chosen)} cases passed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
