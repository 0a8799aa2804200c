"""Moving arrays between the caller's kind (NumPy or CuPy) and Numba device arrays -- written once here.

Every Numba variant is registered with ``array_kind="any"``: ``forward`` receives NumPy arrays or CuPy
arrays and must return the same kind.  Use it like this::

    io = DeviceIO(q)                     # remembers the caller's kind from any input array
    dq = io.to_device(q)                 # NumPy: host->device copy; CuPy: zero-copy view
    o = io.empty((N, T, Dv), q.dtype)    # new device array, NaN-filled while workbench.backends.poisoning()
    kernel[grid, block](dq, ..., o)
    return io.to_caller(o)               # NumPy: device->host copy; CuPy: zero-copy cupy.ndarray

Arrays saved in a variant's ``ctx`` for the backward stay on the device (the objects returned by
``to_device``/``empty``), so a backward pass does not copy them again.

Streams: Numba launches on its default stream (the legacy NULL stream) and CuPy's default stream is also
the NULL stream, so CuPy-allocated outputs and Numba launches are ordered without explicit syncs.  Numba's
``as_cuda_array`` would synchronise the stream a CuPy array exports (CUDA Array Interface v3) on every import:
the host waiting for the GPU to drain before each ``to_device``/``empty``, then the GPU idle while the host
prepares the next launch.  ``_view`` skips that wait when the exported stream is the legacy default stream,
where it orders nothing the launches are not already ordered by (``_view``'s doc); any other stream is
synchronised as before.

Under the CUDA simulator (NUMBA_ENABLE_CUDASIM=1) ``cuda.to_device`` returns a fake device array backed by
NumPy, and everything below works unchanged.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from numba import cuda

from workbench.backends import poisoning

from . import _jit


def _is_cupy(x) -> bool:
    return type(x).__module__.startswith("cupy")


LEGACY_STREAM = 1      # the CUDA Array Interface's "stream" value of the legacy default (NULL) stream


def import_needs_sync(desc: dict) -> bool:
    """Whether importing an array with CUDA Array Interface ``desc`` must wait for its stream: not for the
    legacy default stream (CuPy's current stream unless the caller set another), because every launch here
    goes to Numba's default stream (the legacy stream, or the per-thread default stream, which synchronises
    with it), so each kernel already runs after all work queued on the legacy stream before it; the host
    wait would only leave the GPU idle while the host prepares the next launch.  Any other stream is
    synchronised, as Numba does by default (no stream given: there is nothing to wait for)."""
    return desc.get("stream") != LEGACY_STREAM


def _view(x):
    """A Numba device view of a CuPy array (``import_needs_sync``)."""
    desc = x.__cuda_array_interface__
    return cuda.from_cuda_array_interface(desc, owner=x, sync=import_needs_sync(desc))


class DeviceIO:
    """The caller's array kind, and conversions between it and Numba device arrays."""

    def __init__(self, like):
        self.kind = "cupy" if _is_cupy(like) else "numpy"
        self._cupy = None
        if self.kind == "cupy":
            import cupy
            self._cupy = cupy
        # id(device array) -> (device array, the cupy.ndarray that owns its memory); both kept alive so
        # the id cannot be reused while this DeviceIO lives, and to_caller returns the owner itself.
        self._owners = {}

    @property
    def xp(self):
        """The caller's array module (numpy or cupy), for host-side work on small arrays (states)."""
        return self._cupy if self.kind == "cupy" else np

    def to_device(self, x):
        """A Numba device view of a caller array (copied to the device when it is NumPy)."""
        if self.kind == "cupy":
            if not _is_cupy(x):
                x = self._cupy.asarray(x)
            d = _view(x)
            self._owners[id(d)] = (d, x)
            return d
        if isinstance(x, np.ndarray):
            return cuda.to_device(np.ascontiguousarray(x))
        return x                                   # already a device array

    def empty(self, shape, dtype, fill=None):
        """A new C-contiguous device array; filled with ``fill`` if given, else with NaN while output
        poisoning is on (``workbench.backends.poisoning()``: the tests and ``check``), else uninitialised."""
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        value = fill if fill is not None else (np.nan if poisoning() else None)
        if self.kind == "cupy":
            cp = self._cupy
            x = cp.empty(shape, dtype) if value is None else cp.full(shape, value, dtype)
            d = _view(x)
            self._owners[id(d)] = (d, x)
            return d
        if value is None:
            return cuda.device_array(shape, dtype)
        return cuda.to_device(np.full(shape, value, dtype))

    def zeros(self, shape, dtype):
        """A new device array of zeros (for kernels that accumulate, e.g. with atomics)."""
        return self.empty(shape, dtype, fill=0)

    def to_caller(self, d):
        """The device array as the caller's kind: NumPy (a copy to the host) or CuPy (no copy)."""
        if self.kind == "cupy":
            pair = self._owners.get(id(d))
            return pair[1] if pair is not None and pair[0] is d else self._cupy.asarray(d)
        return d.copy_to_host()


def grid_1d(n: int, threads: int = 128) -> tuple:
    """(blocks, threads) for one thread per item over n items."""
    return (max(1, (n + threads - 1) // threads), threads)


@dataclass
class Saved:
    """The first fields of every Numba variant's context: the caller's array kind, the variant that ran (its
    name: "naive", or the op's fast rung) and the forward's q, k, v as device arrays."""
    io: DeviceIO
    impl: str
    q: object
    k: object
    v: object


def register_variant(op: str, name: str, forward, backward, description: str, tol: dict, **extra) -> None:
    """Register ``numba:<name>`` of ``op``: ``forward(name, *arrays, **options)`` with the name bound (the
    context records it), ``backward(ctx, do)``.  Every Numba variant takes float32 and float64 (accumulating
    in the input's precision), NumPy or CuPy arrays (``array_kind="any"``, see ``DeviceIO``), runs on a CUDA
    device (or the simulator) and takes head dims up to the largest bucket (``head_dims_in_buckets``)."""
    from workbench.registry import Variant, register
    register(Variant(op, "numba", name, functools.partial(forward, name), backward, dtypes=("float32", "float64"),
                     array_kind="any", gpu=True, supports=head_dims_in_buckets, description=description, tol=tol,
                     **extra))


def head_dims_in_buckets(options, shapes):
    """The ``supports`` of every Numba variant: kernels are compiled per head-dim bucket (``_jit.BUCKETS``),
    whose largest bounds the head dims."""
    Dk, Dv = shapes["q"][-1], shapes["v"][-1]
    top = _jit.BUCKETS[-1]
    if Dk > top or Dv > top:
        return f"head dims up to {top} (got Dk={Dk}, Dv={Dv})"
    return None
