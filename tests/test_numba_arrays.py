"""DeviceIO (kernels/numba/_arrays.py) with CuPy arrays: each array becomes a Numba view without a host wait
when it exports the legacy default stream (the launches are ordered after that stream's work anyway), and
with Numba's wait for any other stream.  Without a GPU a stand-in CuPy module records the ``sync`` of every
import; on a GPU, forward + backward of every Numba fast rung on CuPy arrays equals the same call on NumPy
arrays bit for bit (the kernels are the same; only the host waits differ)."""
import sys
import types

import numpy as np
import pytest

import workbench as wb
from workbench.inputs import random_inputs

_arrays = pytest.importorskip("kernels.numba._arrays")


class _StandInArray:
    """What DeviceIO reads of a CuPy array: its module, and its CUDA Array Interface with a stream."""

    def __init__(self, shape, dtype, stream):
        self.shape, self.dtype = tuple(shape), np.dtype(dtype)
        self.__cuda_array_interface__ = {"version": 3, "shape": self.shape, "typestr": self.dtype.str,
                                         "data": (0, False), "strides": None, "stream": stream}


_StandInArray.__module__ = "cupy._core.stand_in"


@pytest.mark.parametrize("stream,waits", [(_arrays.LEGACY_STREAM, False), (2, True), (0x7F00D0A0, True)])
def test_cupy_imports_wait_only_for_streams_other_than_the_legacy_one(monkeypatch, stream, waits):
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(
        empty=lambda shape, dtype: _StandInArray(shape, dtype, stream),
        full=lambda shape, value, dtype: _StandInArray(shape, dtype, stream),
        asarray=lambda x: _StandInArray(np.shape(x), np.asarray(x).dtype, stream)))
    syncs = []

    def import_view(desc, owner=None, sync=True):
        syncs.append(sync)
        return types.SimpleNamespace(desc=desc, owner=owner)

    monkeypatch.setattr(_arrays.cuda, "from_cuda_array_interface", import_view, raising=False)
    q = _StandInArray((2, 5, 4), "float32", stream)
    io = _arrays.DeviceIO(q)
    d = io.to_device(q)                                  # an input
    io.empty((2, 5), "float32")                          # an output or scratch array
    io.to_device(np.arange(3, dtype=np.int32))           # a host table moved through CuPy
    assert syncs == [waits] * 3
    assert d.owner is q and io.to_caller(d) is q


@pytest.mark.gpu
@pytest.mark.parametrize("op", ["softmax", "linear", "decayed", "zeros"])
def test_gpu_cupy_and_numpy_calls_agree_bit_for_bit(op):
    cp = pytest.importorskip("cupy")
    lead, T, D = (2, 3), 300, 64
    arrays = random_inputs(op, lead, T, D, D, "float32", seed=3)
    do = np.random.default_rng(4).standard_normal((*lead, T, D)).astype(np.float32)
    fn = getattr(wb, f"{op}_attention")
    backend = "numba:flash" if op == "softmax" else "numba:chunked"
    out, pull = wb.vjp(fn, *arrays, backend=backend)
    want = (out, *pull(do))
    out, pull = wb.vjp(fn, *(cp.asarray(a) for a in arrays), backend=backend)
    got = (out, *pull(cp.asarray(do)))
    assert all(isinstance(g, cp.ndarray) for g in got)
    for w, g in zip(want, got):
        np.testing.assert_array_equal(cp.asnumpy(g), w)
