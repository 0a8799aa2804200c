"""The lines a benchmark compares: our registered variants, prepared for timing.

A *line* is one implementation of an op.  ``prepare`` turns it and one cell's inputs into a ``Prepared``:
three zero-argument callables, each running one pass (forward; backward on the ctx saved by one forward;
forward then backward), the clock that times them, and the forward's output (for the agreement check).
Peers (``peers.py``) build the same ``Prepared``.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .. import registry


class Skip(Exception):
    """A line that cannot run this cell (recorded as a skip with the message, not as an error)."""


@dataclass
class Prepared:
    forward: Callable[[], Any]
    backward: Optional[Callable[[], Any]]
    fwdbwd: Optional[Callable[[], Any]]
    clock: str                          # "host", "cupy" or "torch": how the passes are timed
    output: Any = None                  # the first forward's output, for the agreement check
    compute: Optional[str] = None       # ceiling key when it differs from the dtype (e.g. "tf32")
    note: str = ""
    peak_mem: Optional[Callable[[], Optional[int]]] = None    # extra device bytes of one fwd+bwd
    extra: dict = field(default_factory=dict)

    def pass_fn(self, pass_: str):
        return {"fwd": self.forward, "bwd": self.backward, "fwdbwd": self.fwdbwd}[pass_]


def validated_options(op: str, options: dict, Dk: int) -> dict:
    """The options a variant's forward receives (the public op's validation: default scale, no causal for
    decayed)."""
    from ..ops import _check_options            # the one place that turns public options into variant ones
    options = dict(options)
    if op == "decayed":
        options.setdefault("causal", True)      # the public op always passes it
    return _check_options(op, options, Dk)


def line_name(variant) -> str:
    return variant.key                           # "cupy:flash", "numpy:chunked", ...


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


def disable_poison() -> list:
    """Turn off the NaN fill of fresh outputs in kernel modules that have one (``POISON = True``): a fill
    kernel is not part of the op.  Returns the modules changed."""
    changed = []
    for name, mod in list(sys.modules.items()):
        if name.startswith("kernels.") and getattr(mod, "POISON", None) is True:
            mod.POISON = False
            changed.append(name)
    return changed


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
