"""Which backends can run here, and moving arrays between NumPy and CuPy.

Nothing here imports CuPy or Numba at module import: both are looked up on first use, so the library
imports on a machine with neither.
"""
from __future__ import annotations

import contextlib
import functools
import os

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
        try:
            import cupy  # noqa: F401
        except Exception as e:
            return False, f"cupy does not import ({type(e).__name__}: {e})"
        if cupy_module() is None:
            return False, "cupy imports but sees no CUDA GPU"
        return True, f"cupy {cupy_module().__version__}"
    return False, f"unknown backend {backend!r}"


def require(backend: str) -> None:
    ok, why = status(backend)
    if not ok:
        raise BackendUnavailable(f"backend {backend!r} cannot run here: {why}. "
                                 f"Use backend='numpy' (always available) or run on a machine with a GPU.")


def gpu_available() -> bool:
    return cupy_module() is not None or (numba_cuda_status()[0] and not numba_simulator())


# ----------------------------------------------------------------------------- array kinds
def array_kind(x) -> str:
    """'numpy' or 'cupy' for an array argument; TypeError for anything else."""
    if isinstance(x, np.ndarray):
        return "numpy"
    mod = type(x).__module__
    if mod.startswith("cupy"):
        return "cupy"
    raise TypeError(f"expected a numpy.ndarray or cupy.ndarray, got {type(x).__name__}")


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


# ----------------------------------------------------------------------------- output poisoning
# Checks and tests fill every kernel output with NaN before the launch, so an element a kernel never wrote
# shows up as NaN instead of as stale memory.  The user's fast path does not pay for those fills: outputs
# are allocated uninitialised unless poisoning is on (environment WORKBENCH_POISON=1, or ``poisoned()``).
_POISON = [os.environ.get("WORKBENCH_POISON", "0") not in ("", "0")]


def poisoning() -> bool:
    """True while kernel outputs are NaN-filled before each launch."""
    return _POISON[-1]


@contextlib.contextmanager
def poisoned(on: bool = True):
    """Turn output poisoning on (or off) inside the block: ``with backends.poisoned(): ...``."""
    _POISON.append(bool(on))
    try:
        yield
    finally:
        _POISON.pop()


def new_output(xp, shape, dtype):
    """A kernel's output buffer of module ``xp`` (numpy or cupy): NaN-filled while poisoning, else
    uninitialised (every element must be written by the kernel)."""
    return xp.full(shape, xp.nan, dtype) if _POISON[-1] else xp.empty(shape, dtype)
