"""The lines a benchmark compares: our registered variants, prepared for timing.

A *line* is one implementation of an op.  ``prepare`` turns it and one cell's inputs into a ``Prepared``:
three zero-argument callables, each running one pass (forward; backward on the ctx saved by one forward;
forward then backward), the clock that times them, and the forward's output (for the agreement check).
Peers (``peers.py``) build the same ``Prepared``.

API lines (``prepare_api``, key ``api:<variant>``) run the same variant through the public API -- the op for
the forward, ``wb.vjp`` then the pullback for fwd+bwd, the pullback of one ``vjp`` for the backward -- and are
wall-clocked (clock "wall": ``perf_counter`` per call, with a device sync after each call on the GPU), so a
table shows what a user pays next to the variant's own time.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .. import registry
from ..opspec import check_options


class Skip(Exception):
    """A line that cannot run this cell (recorded as a skip with the message, not as an error)."""


@dataclass
class Prepared:
    forward: Callable[[], Any]
    backward: Optional[Callable[[], Any]]
    fwdbwd: Optional[Callable[[], Any]]
    clock: str                          # "host", "cupy", "torch" or "wall" (API lines): how passes are timed
    output: Any = None                  # the first forward's output, for the agreement check
    compute: Optional[str] = None       # ceiling key when it differs from the dtype (e.g. "tf32")
    note: str = ""
    peak_mem: Optional[Callable[[], Optional[int]]] = None    # extra device bytes of one fwd+bwd
    extra: dict = field(default_factory=dict)
    sync: Optional[Callable[[], None]] = None     # "wall" clock: waits for the device (None on the host)

    def pass_fn(self, pass_: str):
        return {"fwd": self.forward, "bwd": self.backward, "fwdbwd": self.fwdbwd}[pass_]


def validated_options(op: str, options: dict, Dk: int) -> dict:
    """The options a variant's forward receives (the public op's validation: default scale, no causal for
    a causal-only op)."""
    return check_options(op, options, Dk)


def our_lines(op: str, backends: tuple, exclude: tuple = ()) -> list:
    """Registered variants of ``op`` whose backend is in ``backends`` (registry order), minus ``exclude``."""
    return [v for v in registry.variants(op) if v.backend in backends and v.key not in exclude]


def why_not(variant, dtype: str, options: dict, shapes: dict) -> Optional[str]:
    """None when the variant can run this cell, else the reason (recorded as a skip)."""
    if dtype not in variant.dtypes:
        return f"dtype {dtype} not supported ({', '.join(variant.dtypes)})"
    if variant.gpu:
        from ..backends import numba_simulator, status
        if variant.backend == "numba" and numba_simulator():
            return "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): not timed"
        ok, why = status(variant.backend)
        if not ok:
            return f"backend unavailable: {why}"
    try:
        return variant.unsupported_reason(options, shapes)
    except Exception as e:
        return f"supports() raised {type(e).__name__}: {e}"


def api_variants(op: str, dtype: str, mode: str, variants: list) -> list:
    """The variants (among ``variants``, our lines of the cell) that get an API line: mode "all": each;
    "default": per backend, the one the backend name alone picks for the dtype; "off": none."""
    if mode == "all":
        return list(variants)
    if mode == "off":
        return []
    if mode != "default":
        raise ValueError(f"unknown api mode {mode!r}; expected off, default or all")
    keys = {v.key for v in variants}
    picked = []
    for backend in dict.fromkeys(v.backend for v in variants):
        v = registry.get(op, backend, dtype=dtype)
        if v.key in keys:
            picked.append(v)
    return picked


def to_numpy(x) -> np.ndarray:
    """Any array (NumPy, CuPy, torch, Numba device array) as a float64 NumPy array."""
    if isinstance(x, np.ndarray):
        return x.astype(np.float64)
    mod = type(x).__module__
    if mod.startswith("cupy"):
        return x.get().astype(np.float64)
    if mod.startswith("torch"):
        return x.detach().double().cpu().numpy()
    if hasattr(x, "copy_to_host"):
        return np.asarray(x.copy_to_host(), dtype=np.float64)
    return np.asarray(x, dtype=np.float64)


def prepare_variant(variant, arrays: tuple, dout: np.ndarray, options: dict) -> Prepared:
    """Our variant on one cell: arrays moved to the device for GPU variants (outside the timing), one
    forward run to get the ctx the backward timing reuses."""
    lead = arrays[0].shape[:-2]
    N = int(np.prod(lead)) if lead else 1
    flat = [np.ascontiguousarray(a.reshape((N,) + a.shape[len(lead):])) for a in arrays]
    d = np.ascontiguousarray(dout.reshape((N,) + dout.shape[len(lead):]))
    note = ""
    if variant.gpu and variant.array_kind in ("cupy", "any"):
        cp = importlib.import_module("cupy")
        flat = [cp.asarray(a) for a in flat]
        d = cp.asarray(d)
        clock = "cupy"
    elif variant.gpu:
        clock = "cupy"
        note = "NumPy arrays in: times include host<->device copies"
    else:
        clock = "host"
    opts = validated_options(variant.op, options, arrays[0].shape[-1])
    out, ctx = variant.forward(*flat, **opts)

    def fwd():
        return variant.forward(*flat, **opts)

    def bwd():
        return variant.backward(ctx, d)

    def fwdbwd():
        return variant.backward(variant.forward(*flat, **opts)[1], d)

    def peak_mem():
        # Bytes the CuPy memory pool grows by over one fwd+bwd (after freeing its cached blocks).  Only
        # CuPy-backend variants allocate from that pool; Numba allocates elsewhere, so it gets None.
        if clock != "cupy" or variant.backend != "cupy":
            return None
        cp = importlib.import_module("cupy")
        pool = cp.get_default_memory_pool()
        cp.cuda.Device().synchronize()
        pool.free_all_blocks()
        before = pool.total_bytes()
        fwdbwd()
        cp.cuda.Device().synchronize()
        return int(pool.total_bytes() - before)

    return Prepared(fwd, bwd, fwdbwd, clock, output=out, note=note, peak_mem=peak_mem,
                    compute="tf32" if "tf32" in variant.tags else None)


def prepare_api(variant, arrays: tuple, dout: np.ndarray, options: dict) -> Prepared:
    """The public API running ``variant`` (``backend=variant.key``) on one cell: arrays (and dout) moved to
    the device first for GPU variants that take CuPy arrays, one ``vjp`` whose pullback the backward timing
    reuses.  ``options`` are the public op's keyword options."""
    from ..ops import PUBLIC_OPS, vjp
    op = PUBLIC_OPS[variant.op]
    xs, d, sync = list(arrays), dout, None
    if variant.gpu and variant.array_kind in ("cupy", "any"):
        cp = importlib.import_module("cupy")
        xs, d = [cp.asarray(a) for a in xs], cp.asarray(d)
        device = cp.cuda.Device()
        sync = device.synchronize
    kw = dict(options, backend=variant.key)
    out, pullback = vjp(op, *xs, **kw)

    def fwd():
        return op(*xs, **kw)

    def bwd():
        return pullback(d)

    def fwdbwd():
        return vjp(op, *xs, **kw)[1](d)

    return Prepared(fwd, bwd, fwdbwd, "wall", output=out, sync=sync, extra={"api_of": variant.key})
