"""Which backends can run here, and moving arrays between NumPy and CuPy.

Nothing here imports CuPy or Numba at module import: both are looked up on first use, so the library
imports on a machine with neither.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from typing import Optional

import numpy as np


class BackendUnavailable(RuntimeError):
    """A backend was asked for that cannot run on this machine."""


def numba_simulator() -> bool:
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def cupy_module():
    """The cupy module when CuPy imports and sees a GPU, else None."""
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
        return cupy
    except Exception:
        return None


@functools.lru_cache(maxsize=None)
def numba_cuda_status() -> tuple:
    """(usable, why): Numba CUDA needs a GPU, or the simulator (NUMBA_ENABLE_CUDASIM=1)."""
    try:
        from numba import cuda
    except Exception as e:     # numba missing, or numba-cuda broken by an incompatible numpy
        return False, f"numba.cuda does not import ({type(e).__name__}: {e})"
    if numba_simulator():
        return True, "CUDA simulator (NUMBA_ENABLE_CUDASIM=1)"
    try:
        if cuda.is_available():
            name = cuda.get_current_device().name
            return True, f"GPU {name.decode() if isinstance(name, bytes) else name}"
    except Exception as e:
        return False, f"no CUDA GPU ({e})"
    return False, "no CUDA GPU found (set NUMBA_ENABLE_CUDASIM=1 to use the simulator)"


def status(backend: str) -> tuple:
    """(usable, description) for a backend name."""
    if backend == "numpy":
        return True, f"numpy {np.__version__} (CPU)"
    if backend == "numba":
        return numba_cuda_status()
    if backend == "cupy":
        cp = cupy_module()
        if cp is not None:                      # the cached answer first: the ops ask on every call
            return True, f"cupy {cp.__version__}"
        try:
            import cupy  # noqa: F401
        except Exception as e:
            return False, f"cupy does not import ({type(e).__name__}: {e})"
        if cupy_module() is None:
            return False, "cupy imports but sees no CUDA GPU"
        return True, f"cupy {cupy_module().__version__}"
    return False, f"unknown backend {backend!r}"


def usable(backend: str) -> bool:
    """``status(backend)[0]`` without building the description where CuPy is known usable (the ops ask on every
    call of a GPU variant)."""
    if backend == "cupy" and cupy_module() is not None:
        return True
    return status(backend)[0]


def require(backend: str) -> None:
    ok, why = status(backend)
    if not ok:
        raise BackendUnavailable(f"backend {backend!r} cannot run here: {why}. "
                                 f"Use backend='numpy' (always available) or run on a machine with a GPU.")


def gpu_available() -> bool:
    return cupy_module() is not None or (numba_cuda_status()[0] and not numba_simulator())


# ----------------------------------------------------------------------------- array kinds
def array_kind(x) -> str:
    """'numpy' or 'cupy' for an array argument; TypeError for anything else.  NumPy subclasses whose
    semantics the ops would silently drop are refused: ``numpy.matrix`` (2-D only, ``*`` is a matrix
    product) and masked arrays (the mask would be ignored)."""
    t = type(x)
    if t is np.ndarray:
        return "numpy"
    if isinstance(x, np.ndarray):
        if isinstance(x, np.matrix):
            raise TypeError("got a numpy.matrix; pass a numpy.ndarray (np.asarray(x))")
        if isinstance(x, np.ma.MaskedArray):
            raise TypeError("got a masked array (numpy.ma.MaskedArray); the ops cannot honour a mask: pass "
                            "x.filled(value) or np.asarray(x) to say what masked elements hold")
        return "numpy"
    if t.__module__.startswith("cupy"):
        return "cupy"
    raise TypeError(f"expected a numpy.ndarray or cupy.ndarray, got {t.__name__}")


def to_kind(x, kind: str):
    """Convert an array to 'numpy' or 'cupy' (no copy when it is already that kind)."""
    if kind == "numpy":
        if isinstance(x, np.ndarray):
            return x
        return x.get()
    if kind == "cupy":
        cp = cupy_module()
        if cp is None:
            raise BackendUnavailable("CuPy with a GPU is needed to move arrays to the device")
        return cp.asarray(x)
    raise ValueError(kind)


# ----------------------------------------------------------------------------- switches
# Two process-wide switches, each a stack so that a ``with`` block restores the previous state.
#   poisoning:     checks and tests fill every kernel output with NaN before the launch, so an element a
#                  kernel never wrote shows up as NaN instead of as stale memory.  The user's fast path does
#                  not pay for those fills: outputs are allocated uninitialised unless poisoning is on
#                  (environment WORKBENCH_POISON=1, or ``poisoned()``).
#   device checks: input checks that need the values of CuPy arrays (a device reduction and a host sync per
#                  call, e.g. refusing positive log decays) run only while this is on (environment
#                  WORKBENCH_DEVICE_CHECKS=1, or ``device_checked()``); NumPy inputs are always checked.
def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0")


_POISON = [_env_flag("WORKBENCH_POISON")]
_DEVICE_CHECKS = [_env_flag("WORKBENCH_DEVICE_CHECKS")]


@contextlib.contextmanager
def _pushed(stack: list, on: bool):
    stack.append(bool(on))
    try:
        yield
    finally:
        stack.pop()


def poisoning() -> bool:
    """True while kernel outputs are NaN-filled before each launch."""
    return _POISON[-1]


def poisoned(on: bool = True):
    """Turn output poisoning on (or off) inside the block: ``with backends.poisoned(): ...``."""
    return _pushed(_POISON, on)


@contextlib.contextmanager
def merge_bound(nbytes: int, group: Optional[int] = None):
    """OUTPUTS_MERGE_MAX set to ``nbytes`` and OUTPUTS_GROUP_MAX to ``group`` (None: ``nbytes`` too) inside the
    block (the tests: 0 puts every pass above both bounds, where calls of more than 4 MiB go, one allocation per
    output; ``merge_bound(0, 1 << 30)`` where calls of 4-32 MiB go, the outputs apart from the scratch)."""
    global OUTPUTS_MERGE_MAX, OUTPUTS_GROUP_MAX
    saved = OUTPUTS_MERGE_MAX, OUTPUTS_GROUP_MAX
    OUTPUTS_MERGE_MAX, OUTPUTS_GROUP_MAX = nbytes, nbytes if group is None else group
    try:
        yield
    finally:
        OUTPUTS_MERGE_MAX, OUTPUTS_GROUP_MAX = saved


def device_checks() -> bool:
    """True while the ops check the values of CuPy inputs too (each such check syncs the device)."""
    return _DEVICE_CHECKS[-1]


def device_checked(on: bool = True):
    """Check the values of CuPy inputs (or not) inside the block: ``with backends.device_checked(): ...``."""
    return _pushed(_DEVICE_CHECKS, on)


def new_output(xp, shape, dtype):
    """A kernel's output buffer of module ``xp`` (numpy or cupy): NaN-filled while poisoning, else
    uninitialised (every element must be written by the kernel)."""
    return xp.full(shape, xp.nan, dtype) if _POISON[-1] else xp.empty(shape, dtype)


_DTYPE_NAMES: dict = {}        # dtype -> its name in byte-order-free form ('>f4' -> 'float32')


def dtype_name(dt) -> str:
    """``str(dt)`` in byte-order-free form ('>f4' -> 'float32'), cached per dtype: NumPy's str of a dtype is
    Python code, microseconds per call, and the ops and the launch paths ask on every call."""
    name = _DTYPE_NAMES.get(dt)
    if name is None:
        name = _DTYPE_NAMES[dt] = str(dt if dt.isnative else dt.newbyteorder("="))
    return name


SCRATCH_ALIGN = 256       # bytes: where each part of a scratch allocation starts (as CuPy aligns allocations)


@functools.lru_cache(maxsize=1024)
def _scratch_offsets(layout: tuple) -> tuple:
    """(byte offset of every part, total bytes) of a scratch layout ((shape, dtype), ...)."""
    offsets, n = [], 0
    for shape, dtype in layout:
        offsets.append(n)
        n += -(-math.prod(shape) * np.dtype(dtype).itemsize // SCRATCH_ALIGN) * SCRATCH_ALIGN
    return tuple(offsets), max(n, 1)


def _cuda_alloc(xp):
    """``cupy.cuda.alloc`` of module ``xp`` (the pool's memory without an array around it), or None (NumPy, the CUDA
    emulator's stand-in)."""
    return getattr(getattr(xp, "cuda", None), "alloc", None)


def _raw(xp, nbytes: int):
    """``nbytes`` of memory of module ``xp``: a 0xFF-filled uint8 array while poisoning (NaN in every float format);
    else CuPy's pool memory itself (``cupy.cuda.alloc``: a MemoryPointer, no array around it) where there is one,
    an uninitialised uint8 array otherwise (NumPy, the CUDA emulator's stand-in)."""
    if _POISON[-1]:
        return xp.full(nbytes, 255, np.uint8)
    alloc = _cuda_alloc(xp)
    return alloc(nbytes) if alloc is not None else xp.empty(nbytes, np.uint8)


def _mem(keep):
    """CuPy memory of ``_raw``'s allocation: the array's MemoryPointer (poisoning), or the MemoryPointer itself."""
    return getattr(keep, "data", keep)


def _base(keep) -> int:
    """The address of ``_raw``'s memory (a MemoryPointer's ``ptr`` without data_ptr's exception path)."""
    ptr = getattr(keep, "ptr", None)
    return data_ptr(keep) if ptr is None else ptr


def new_scratch(xp, layout: tuple) -> tuple:
    """Scratch buffers a kernel launch sequence needs only by address, carved from one allocation of module
    ``xp``: ``layout`` is ((shape, dtype), ...); returns (the allocation, the address of every part as
    ``np.uint64``; the allocation is an array, or CuPy's MemoryPointer when not poisoning).  Keep it referenced
    while the parts are in use.  Every part starts on SCRATCH_ALIGN bytes; while poisoning every byte is 0xFF (NaN
    in every float format), else uninitialised."""
    offsets, nbytes = _scratch_offsets(layout)
    buf = _raw(xp, nbytes)
    base = _base(buf)
    return buf, [np.uint64(base + o) for o in offsets]


OUTPUTS_MERGE_MAX = 4 << 20     # bytes: the outputs of one pass up to this total share one allocation
OUTPUTS_SIDE_FRACTION = 16      # ... and above it too when all but the largest output take <= 1/16 of its bytes
# bytes: above OUTPUTS_MERGE_MAX the outputs alone (not the scratch) still share one allocation up to this total --
# a kept output then holds at most this much.  Two allocations fewer per backward of three gradients: at softmax
# float16 T = 1024 (B = 2, H = 16, 12 MiB of gradients) the host's allocations sit between the backward's launches,
# where the GPU waits for them (docs/kernels/host.md "Eleventh pass")
OUTPUTS_GROUP_MAX = 32 << 20


class OutputLayout:
    """The outputs of one kernel pass and its scratch, laid out once (``outputs_layout``; a plan keeps it):
    every part's byte offset (SCRATCH_ALIGN), the total, and a function made for this layout that builds every
    CuPy view and scratch address in one call (``cupy.ndarray(shape, dtype, memptr)`` with the shapes, dtypes
    and offsets as constants: no per-call zip, offsets, keyword arguments or layout hashing).  ``new(xp)``
    allocates: see ``new_outputs``.

    One allocation or more (``new``): one up to OUTPUTS_MERGE_MAX bytes in all; above it one when ``together``
    (parts that live and die together: a context's saved arrays) or when everything but the largest output is small
    beside it (at most 1/OUTPUTS_SIDE_FRACTION of its bytes: softmax's o and its row statistics); else the scratch
    apart and the outputs in one allocation up to OUTPUTS_GROUP_MAX bytes, one each above it -- so that a kept
    output never holds much more memory than its own, or than OUTPUTS_GROUP_MAX."""
    __slots__ = ("outputs", "scratch", "offsets", "nbytes", "scratch_offsets", "_parts", "_views", "_addrs",
                 "one_block", "outputs_nbytes")

    def __init__(self, outputs: tuple, scratch: tuple = (), together: bool = False):
        self.outputs = tuple((tuple(shape), np.dtype(dtype)) for shape, dtype in outputs)
        self.scratch = tuple(scratch)
        offsets, self.nbytes = _scratch_offsets(self.outputs + self.scratch)
        n = len(self.outputs)
        self.offsets, self.scratch_offsets = offsets[:n], offsets[n:]
        largest = max((math.prod(s) * d.itemsize for s, d in self.outputs), default=0)
        self.one_block = together or (self.nbytes - largest) * OUTPUTS_SIDE_FRACTION <= largest   # at any size
        scope = {f"S{i}": s for i, (s, _) in enumerate(self.outputs)}
        scope.update({f"D{i}": d for i, (_, d) in enumerate(self.outputs)}, u64=np.uint64)
        views = ", ".join(f"nd(S{i}, D{i}, mem{f' + {o}' if o else ''})" for i, o in enumerate(self.offsets))
        addrs = ", ".join(f"u64(base + {o})" for o in self.scratch_offsets)
        every = ", ".join(f"u64(base + {o})" for o in self.offsets + self.scratch_offsets)
        exec(f"def parts(nd, mem):\n    base = mem.ptr\n    return ({views}{',' if n == 1 else ''}), [{addrs}]\n"
             f"def views(nd, mem):\n    return ({views}{',' if n == 1 else ''})\n"
             f"def addrs(base):\n    return ({every},)\n", scope)
        self._parts, self._views, self._addrs = scope["parts"], scope["views"], scope["addrs"]
        self.outputs_nbytes = self.scratch_offsets[0] if self.scratch else self.nbytes     # the outputs' share

    def separate(self) -> bool:
        """True when ``new`` allocates every output and the scratch apart (above OUTPUTS_MERGE_MAX, not one
        block).  A caller may then take the scratch alone first (``new_scratch(xp, layout.scratch)``), queue the
        launches that need only it, and allocate the outputs after (``outputs_apart``) while the GPU runs them."""
        return self.nbytes > OUTPUTS_MERGE_MAX and not self.one_block

    def _grouped(self, xp) -> bool:
        """Whether the outputs of a separate layout share one allocation: CuPy (``cupy.cuda.alloc``), more than
        one output, at most OUTPUTS_GROUP_MAX bytes of them; else one allocation each."""
        return len(self.outputs) > 1 and self.outputs_nbytes <= OUTPUTS_GROUP_MAX and _cuda_alloc(xp) is not None

    def outputs_apart(self, xp) -> tuple:
        """The outputs of a separate layout (``separate``): CuPy's in one allocation of their own up to
        OUTPUTS_GROUP_MAX bytes, else (and NumPy's) one allocation each."""
        if not self._grouped(xp):
            return tuple([new_output(xp, shape, dtype) for shape, dtype in self.outputs])
        return self._views(xp.ndarray, _mem(_raw(xp, self.outputs_nbytes)))

    def outputs_by_address(self, xp) -> tuple:
        """``outputs_apart`` for a caller that launches before it makes the output arrays: (what to keep, the
        outputs' addresses as ``np.uint64``); ``outputs_views(xp, kept)`` makes the outputs after the launch."""
        if not self._grouped(xp):
            outs = self.outputs_apart(xp)
            return outs, tuple([np.uint64(data_ptr(o)) for o in outs])
        keep = _raw(xp, self.outputs_nbytes)
        return keep, self._addrs(_base(keep))[:len(self.outputs)]

    def outputs_views(self, xp, keep) -> tuple:
        """The outputs of ``outputs_by_address``'s ``keep``."""
        return keep if type(keep) is tuple else self.views(xp, keep)

    def new_by_address(self, xp) -> tuple:
        """One allocation of the whole layout at any size, by address, for a caller that launches before it makes
        the output arrays (their construction then runs while the GPU works): (the allocation, the address of
        every output and then of every scratch part, as ``np.uint64``).  ``views(xp, allocation)`` makes the
        outputs after the launch.  (For layouts whose parts live and die together: a kept output holds it all.)"""
        keep = _raw(xp, self.nbytes)
        return keep, self._addrs(_base(keep))

    def views(self, xp, keep) -> tuple:
        """The outputs on ``new_by_address``'s allocation ``keep``."""
        if isinstance(keep, np.ndarray):       # NumPy, and the CUDA emulator's stand-in device arrays
            return tuple(keep[o:o + math.prod(shape) * dtype.itemsize].view(dtype).reshape(shape)
                         for o, (shape, dtype) in zip(self.offsets, self.outputs))
        return self._views(xp.ndarray, _mem(keep))

    def new(self, xp) -> tuple:
        """(outputs, scratch addresses as ``np.uint64``, the allocation to keep referenced while the scratch is
        in use) of module ``xp``, as ``new_outputs`` describes."""
        if self.separate():
            outs = self.outputs_apart(xp)
            keep, addrs = new_scratch(xp, self.scratch) if self.scratch else (None, [])
            return outs, addrs, keep
        keep = _raw(xp, self.nbytes)
        if isinstance(keep, np.ndarray):         # NumPy, and the CUDA emulator's stand-in device arrays
            base = data_ptr(keep)
            return self.views(xp, keep), [np.uint64(base + o) for o in self.scratch_offsets], keep
        outs, addrs = self._parts(xp.ndarray, _mem(keep))
        return outs, addrs, keep


@functools.lru_cache(maxsize=1024)
def outputs_layout(outputs: tuple, scratch: tuple = (), together: bool = False) -> OutputLayout:
    """The OutputLayout of ``outputs`` ((shape, dtype), ...) and ``scratch`` (``new_scratch``'s layout), made
    once per pair (``together``: one allocation at any size, see OutputLayout)."""
    return OutputLayout(outputs, scratch, together)


def new_outputs(xp, layout: tuple, scratch: tuple = ()) -> tuple:
    """The outputs of one kernel pass, ``layout`` ((shape, dtype), ...), and its scratch (``new_scratch``'s
    layout), in one allocation of module ``xp`` when they total at most OUTPUTS_MERGE_MAX bytes: each output
    a view (CuPy: an ndarray on the allocation's memory -- ``cupy.cuda.alloc``'s, no uint8 array around it --
    no pool allocation of its own; every part starts on SCRATCH_ALIGN bytes), each scratch part by address.
    Above the bound (where the kernels' time dwarfs an allocation's, and one kept output would hold the
    others' memory) one allocation per output and one for the scratch.  Returns (outputs, scratch addresses
    as ``np.uint64``, the allocation to keep referenced while the scratch is in use: an array, or CuPy's
    MemoryPointer).  While poisoning every byte is 0xFF (NaN in every float format).  A caller with a plan
    keeps ``outputs_layout(layout, scratch)`` and calls its ``new(xp)``: no layout lookup per call.  (Above the
    bound, one allocation still when all but the largest output are small beside it: ``OutputLayout``.)"""
    return outputs_layout(tuple(layout), tuple(scratch)).new(xp)


def data_ptr(x) -> int:
    """The address of an array's first element (CuPy: device pointer; NumPy: host pointer), or of a CuPy
    MemoryPointer (``new_outputs``' allocation)."""
    try:
        return x.data.ptr
    except AttributeError:
        if hasattr(x, "ptr"):
            return x.ptr
        return x.__array_interface__["data"][0]
