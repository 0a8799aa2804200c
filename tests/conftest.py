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
