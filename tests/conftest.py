"""Test set-up: on a machine without a CUDA GPU, run Numba kernels on the CUDA simulator.

NUMBA_ENABLE_CUDASIM must be set before numba.cuda is first imported, so it is decided here, from the
presence of an NVIDIA device node / driver library, without importing numba.
"""
import ctypes.util
import glob
import os

import pytest


def _has_nvidia_gpu() -> bool:
    return bool(glob.glob("/dev/nvidia[0-9]*")) and ctypes.util.find_library("cuda") is not None


HAS_GPU = _has_nvidia_gpu()
# Tests poison every kernel output with NaN before each launch (unwritten elements show up).
os.environ.setdefault("WORKBENCH_POISON", "1")
if not HAS_GPU:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# ----------------------------------------------------------------------------- Numba kernels on the simulator
@pytest.fixture
def small_buckets(monkeypatch):
    """On the simulator, Numba head-dim buckets of 8 and 16 with skip groups of 4 (GPU: 64/128/256 and 16), so
    that the simulator stays fast and a bucket holds partial groups and groups skipped at run time."""
    from workbench.backends import numba_simulator
    if numba_simulator():
        from kernels.numba import _jit
        monkeypatch.setattr(_jit, "BUCKETS", (8, 16))
        monkeypatch.setattr(_jit, "GROUP", 4)


@pytest.fixture
def tiles(monkeypatch, small_buckets):
    """set_tiles(cfg, scan_threads=4): the Numba chunked core's tiles (``cfg``: keys of _chunked.CONFIG) and the
    threads of the decayed and ZeroS scans, with small_buckets."""
    from kernels.numba import _chunked, decayed, zeros

    def set_tiles(cfg, scan_threads=4):
        for key, val in cfg.items():
            monkeypatch.setitem(_chunked.CONFIG, key, val)
        for module in (decayed, zeros):
            monkeypatch.setattr(module, "SCAN_THREADS", scan_threads)
    return set_tiles


# ----------------------------------------------------------------------------- failures injected into a run
@pytest.fixture
def fail_when(monkeypatch):
    """fail_when(owner, name, when, error): owner.name (a function of a case, then anything) raises ``error``
    for the cases where when(case) holds and runs as before for the others (one failing case of a run)."""
    def inject(owner, name, when, error):
        real = getattr(owner, name)

        def failing(case, *args, **kwargs):
            if when(case):
                raise error
            return real(case, *args, **kwargs)
        monkeypatch.setattr(owner, name, failing)
    return inject
