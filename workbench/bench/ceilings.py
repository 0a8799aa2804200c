"""Roofline ceilings measured on the device at the start of a run (docs/spec.md section 5), cached per device name.

What is measured.
* ``bw``: device-to-device copy of a 1 GiB float32 buffer into another (``dst[...] = src`` in CuPy), median
  of CUDA-event timings; bytes counted = read + write = 2 x 1 GiB.  Unit: byte/s.
* ``flops[dtype]``: one square matmul ``C = A @ B`` of n x n (n = 8192, 2 n^3 FLOPs), median time,
  for float64, float32 (plain FP32: CuPy's default compute type), tf32 (float32 with TF32 tensor cores:
  CuPy's compute type switched to TF32 when CuPy allows it, else torch with ``allow_tf32``), float16
  (CuPy) and bfloat16 (torch).  Unit: FLOP/s.  A dtype that cannot be measured is left out.
* On the host (NumPy backend) the same two measurements with NumPy (memcpy of 256 MiB, a 2048 matmul in
  float32 and float64).

The result is cached in ``~/.cache/attention-workbench/ceilings.json`` (``$WORKBENCH_CACHE`` overrides the
folder) keyed by device name; ``--remeasure`` ignores the cache; ``--peak-bw`` and ``--peak-flops
dtype=value`` override single numbers (units: GB/s and TFLOP/s on the command line).
"""
from __future__ import annotations

import json
import os
import platform
import time
from typing import Optional

import numpy as np

from .timing import gpu_clock, time_gpu, time_host


def _torch_clock():
    return gpu_clock(prefer="torch")

GPU_DTYPES = ("float64", "float32", "tf32", "float16", "bfloat16")


def cache_path() -> str:
    root = os.environ.get("WORKBENCH_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                             "attention-workbench")
    return os.path.join(root, "ceilings.json")


def gpu_name() -> Optional[str]:
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        pass
    try:
        import torch
        if torch.cuda.is_available():
            return torch.cuda.get_device_name()
    except Exception:
        pass
    return None


def host_name() -> str:
    return f"host {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


# ----------------------------------------------------------------------------- GPU measurements
def _gpu_bandwidth(nbytes: int = 1 << 30) -> float:
    import cupy as cp
    src = cp.random.random_sample(nbytes // 4, dtype=cp.float32)
    dst = cp.empty_like(src)

    def copy():
        dst[...] = src
    t = time_gpu(copy, warmup=3, reps=20, flush_l2=False)
    del src, dst
    return 2 * nbytes / (t.ms_median * 1e-3)


def _cupy_matmul(dtype: str, n: int) -> float:
    import cupy as cp
    a = cp.random.standard_normal((n, n), dtype=cp.float32).astype(dtype)
    b = cp.random.standard_normal((n, n), dtype=cp.float32).astype(dtype)
    t = time_gpu(lambda: a @ b, warmup=3, reps=10, flush_l2=False)
    return 2 * n ** 3 / (t.ms_median * 1e-3)


def _cupy_tf32(n: int) -> float:
    """float32 matmul with CuPy's compute type set to TF32 (an internal switch; restored afterwards)."""
    import cupy as cp
    from cupy._core import _routines_linalg as rl      # noqa: internal, guarded by the caller's try
    old = rl.get_compute_type(cp.float32)
    rl.set_compute_type(cp.float32, getattr(rl, "COMPUTE_TYPE_TF32", 7))     # 7: TF32 in CuPy's enum
    try:
        return _cupy_matmul("float32", n)
    finally:
        rl.set_compute_type(cp.float32, old)


def _torch_matmul(dtype: str, n: int) -> float:
    import torch
    tdt = {"bfloat16": torch.bfloat16, "tf32": torch.float32, "float16": torch.float16,
           "float32": torch.float32, "float64": torch.float64}[dtype]
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = dtype == "tf32"
    try:
        a = torch.randn(n, n, device="cuda", dtype=torch.float32).to(tdt)
        b = torch.randn(n, n, device="cuda", dtype=torch.float32).to(tdt)
        t = time_gpu(lambda: a @ b, warmup=3, reps=10, flush_l2=False, clock=_torch_clock())
        return 2 * n ** 3 / (t.ms_median * 1e-3)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


def measure_gpu(n: int = 8192, echo=print) -> dict:
    """Measure copy bandwidth and matmul FLOP/s per dtype on the current GPU (about 5 s on an H100)."""
    out = {"device": gpu_name(), "bw": None, "flops": {}, "method": {}, "errors": {},
           "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        out["bw"] = _gpu_bandwidth()
        out["method"]["bw"] = "cupy d2d copy 1 GiB, read+write"
    except Exception as e:
        out["errors"]["bw"] = f"{type(e).__name__}: {e}"
    plans = {"float64": [("cupy", _cupy_matmul)], "float32": [("cupy", _cupy_matmul), ("torch", _torch_matmul)],
             "tf32": [("cupy", lambda d, n: _cupy_tf32(n)), ("torch", _torch_matmul)],
             "float16": [("cupy", _cupy_matmul), ("torch", _torch_matmul)],
             "bfloat16": [("torch", _torch_matmul)]}
    for dtype in GPU_DTYPES:               # every library that can run the dtype; the best one is the ceiling
        for lib, fn in plans[dtype]:
            size = n if dtype != "float64" else n // 2
            try:
                v = fn(dtype, size)
            except Exception as e:
                out["errors"].setdefault(dtype, []).append(f"{lib}: {type(e).__name__}: {str(e)[:200]}")
                continue
            if v > out["flops"].get(dtype, 0):
                out["flops"][dtype] = v
                out["method"][dtype] = f"{lib} matmul {size}^2"
        if dtype in out["flops"]:
            out["errors"].pop(dtype, None)
    if echo:
        echo(describe(out))
    return out


def measure_host(echo=print) -> dict:
    """Measure the host's memcpy bandwidth and NumPy matmul FLOP/s (float32, float64)."""
    out = {"device": host_name(), "bw": None, "flops": {}, "method": {}, "errors": {},
           "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")}
    nbytes = 256 << 20
    rng = np.random.default_rng(0)
    src = rng.random(nbytes // 8)
    dst = np.empty_like(src)
    t = time_host(lambda: np.copyto(dst, src), warmup=1, reps=5)
    out["bw"] = 2 * nbytes / (t.ms_median * 1e-3)
    out["method"]["bw"] = "numpy copyto 256 MiB, read+write"
    n = 1024
    for dtype in ("float32", "float64"):
        a = rng.standard_normal((n, n)).astype(dtype)
        b = rng.standard_normal((n, n)).astype(dtype)
        t = time_host(lambda: a @ b, warmup=1, reps=5)
        out["flops"][dtype] = 2 * n ** 3 / (t.ms_median * 1e-3)
        out["method"][dtype] = f"numpy matmul {n}^2"
    if echo:
        echo(describe(out))
    return out


# ----------------------------------------------------------------------------- cache and overrides
def _load_cache() -> dict:
    try:
        with open(cache_path()) as f:
            return json.load(f)
    except Exception:
        return {}


def _save_cache(cache: dict) -> None:
    try:
        os.makedirs(os.path.dirname(cache_path()), exist_ok=True)
        with open(cache_path(), "w") as f:
            json.dump(cache, f, indent=1)
    except OSError:
        pass                                  # a read-only home: the numbers still go into the result


def get_ceilings(gpu: bool, remeasure: bool = False, peak_bw: float = None, peak_flops: dict = None,
                 echo=print) -> dict:
    """Ceilings of this device: from the cache, else measured now (and cached); then the overrides.
    ``peak_bw`` in byte/s, ``peak_flops`` {dtype: FLOP/s}."""
    name = (gpu_name() if gpu else host_name()) or "unknown device"
    cache = _load_cache()
    ceil = None if remeasure else cache.get(name)
    if ceil is None:
        try:
            ceil = measure_gpu(echo=echo) if gpu else measure_host(echo=echo)
        except Exception as e:
            ceil = {"device": name, "bw": None, "flops": {}, "method": {},
                    "errors": {"all": f"{type(e).__name__}: {e}"}}
        if ceil.get("bw") or ceil.get("flops"):
            cache[name] = ceil
            _save_cache(cache)
        ceil["source"] = "measured"
    else:
        ceil = dict(ceil, source=f"cache {cache_path()}")
    ceil = dict(ceil, flops=dict(ceil.get("flops") or {}), overrides={})
    if peak_bw:
        ceil["bw"] = peak_bw
        ceil["overrides"]["bw"] = peak_bw
    for dt, v in (peak_flops or {}).items():
        ceil["flops"][dt] = v
        ceil["overrides"][dt] = v
    return ceil


def parse_peak_flops(items) -> dict:
    """``("float16=658", "tf32=371")`` (TFLOP/s) -> {dtype: FLOP/s}."""
    out = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"--peak-flops expects dtype=TFLOPS, got {item!r}")
        dt, val = item.split("=", 1)
        out[dt.strip()] = float(val) * 1e12
    return out


def describe(ceil: dict) -> str:
    parts = [f"ceilings of {ceil.get('device')}:"]
    if ceil.get("bw"):
        parts.append(f"copy {ceil['bw'] / 1e9:.4g} GB/s")
    for dt, v in (ceil.get("flops") or {}).items():
        parts.append(f"{dt} {v / 1e12:.3g} TFLOP/s")
    if ceil.get("errors"):
        parts.append(f"(not measured: {', '.join(ceil['errors'])})")
    return " ".join(parts)
