"""Numba decayed attention (naive and chunked) against the float64 explicit NumPy reference, through the public
API.  On a CPU machine the kernels run on Numba's CUDA simulator (tests/conftest.py), so shapes and tiles are
tiny: chunk 8 with T = 19 (three chunks, the last one partial), Da/Dc tiles of 4 with Dk = 5, Dv = 7 (two tiles
each, the last one partial).  The simulator never type-checks a kernel, so one test compiles every kernel to
PTX with libNVVM (no GPU needed).  GPU-only tests use the real tile sizes."""
import os
import subprocess
import sys

import numpy as np
import pytest

import workbench as wb
from workbench.inputs import random_inputs
from workbench.reference import decayed as ref

nd = pytest.importorskip("kernels.numba.decayed")
from kernels.numba import _chunked  # noqa: E402

pytestmark = pytest.mark.slow      # Numba CUDA simulator: minutes; -m "not slow" leaves them out
TOL = {"float32": 1e-4, "float64": 1e-10}
MULTI_TILE = {"chunk": 8, "block_k": 4, "block_v": 4, "threads": 8}
ONE_TILE = {"chunk": 8, "block_k": 8, "block_v": 8, "threads": 8}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def tiles(monkeypatch):
    def set_tiles(cfg, scan_threads=4):
        for key, val in cfg.items():
            monkeypatch.setitem(_chunked.CONFIG, key, val)
        monkeypatch.setattr(nd, "SCAN_THREADS", scan_threads)
    return set_tiles


def rel(x, r):
    """||x - r|| / ||r||; against max(||r||, 1) where the reference is (numerically) zero (dg at T = 1)."""
    r = np.asarray(r, np.float64)
    err = np.linalg.norm(np.asarray(x, np.float64) - r)
    return err / (np.linalg.norm(r) if np.linalg.norm(r) > 1e-6 else 1.0)


def run(variant, q, k, v, g, do, scale=1.0):
    out, pull = wb.vjp(wb.decayed_attention, q, k, v, g, backend=f"numba:{variant}", scale=scale)
    grads = pull(do)
    T = q.shape[-2]        # the reference takes one leading dim: flatten, then restore the shapes
    flat = [x.astype(np.float64).reshape((-1, T) + x.shape[len(q.shape) - 1:]) for x in (q, k, v, g, do)]
    o_ref, ctx = ref.explicit_forward(*flat[:4], scale=scale)
    want = (o_ref,) + tuple(ref.explicit_backward(ctx, flat[4]))
    return (out,) + tuple(grads), tuple(w.reshape(x.shape) for w, x in zip(want, (out, q, k, v, g)))


def check_case(variant, lead, T, Dk, Dv, dtype, scale=1.0, decay_range=(-1.0, -0.01), seed=0):
    q, k, v, g = random_inputs("decayed", lead=lead, T=T, Dk=Dk, Dv=Dv, dtype=dtype, seed=seed,
                               log_decay_range=decay_range)
    do = np.random.default_rng(seed + 1).standard_normal((*lead, T, Dv)).astype(dtype)
    got, want = run(variant, q, k, v, g, do, scale)
    for name, x, r in zip(("o", "dq", "dk", "dv", "dlog_decay"), got, want):
        assert x.dtype == np.dtype(dtype) and x.shape == r.shape, (name, x.dtype, x.shape)
        err = rel(x, r)
        assert np.isfinite(err) and err < TOL[dtype], (variant, name, err)


@pytest.mark.parametrize("variant", ["naive", "chunked"])
def test_awkward_shape_several_tiles(variant, tiles):
    """T = 19 over chunks of 8; Dk = 5, Dv = 7 over tiles of 4 (partial chunk and tiles everywhere)."""
    tiles(MULTI_TILE)
    check_case(variant, (2,), 19, 5, 7, "float64", scale=0.7)


@pytest.mark.parametrize("variant", ["naive", "chunked"])
def test_float32_two_leading_dims(variant, tiles):
    tiles(ONE_TILE, scan_threads=2)
    check_case(variant, (2, 3), 10, 3, 2, "float32", seed=3)


@pytest.mark.parametrize("variant", ["naive", "chunked"])
def test_single_position(variant, tiles):
    tiles(ONE_TILE)
    check_case(variant, (3,), 1, 4, 3, "float64")


@pytest.mark.parametrize("variant,dtype", [("chunked", "float32"), ("chunked", "float64"), ("naive", "float32")])
def test_strong_decay_is_stable(variant, dtype, tiles):
    """log decays in [-30, 0]: the whole-sequence cumsum reaches ~-300, exp(-G) would overflow float32."""
    tiles(ONE_TILE)
    check_case(variant, (1,), 19, 4, 4, dtype, decay_range=(-30.0, 0.0), seed=5)


@pytest.mark.parametrize("variant", ["naive", "chunked"])
def test_nan_propagates_forward_only(variant, tiles):
    """A NaN in v[5, 1] reaches column 1 of the rows t >= 5 that see it, and nothing else."""
    tiles(ONE_TILE)
    q, k, v, g = random_inputs("decayed", lead=(1,), T=13, Dk=4, Dv=3, dtype="float64")
    v[0, 5, 1] = np.nan
    o = wb.decayed_attention(q, k, v, g, backend=f"numba:{variant}")
    # (the explicit reference's masked matmul turns 0 * NaN into NaN in rows t < 5 too: not compared)
    assert np.isnan(o[0, 5:, 1]).all() and np.isfinite(o[0, :5]).all() and np.isfinite(o[0, :, [0, 2]]).all()


def test_tiles_fit_device_limits():
    """Every head dim up to 256, both dtypes: static shared memory <= 48 KB, threads <= 1024, tiles >= 1."""
    for itemsize in (4, 8):
        for Da in list(range(1, 17)) + [31, 32, 63, 64, 80, 96, 127, 128, 129, 192, 255, 256]:
            for Dc in (1, 7, 64, 128, 256):
                C, BK, BV, NT = _chunked.tiles(Da, Dc, 1, 1, itemsize)
                assert _chunked.shared_bytes(Da, 1, 1, C, BK, BV, itemsize) <= 48 * 1024
                assert min(C, BK, BV) >= 1 and NT <= 1024


# ----------------------------------------------------------------------------- real GPU, real tile sizes
@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["naive", "chunked"])
@pytest.mark.parametrize("lead,T,Dk,Dv,dtype", [
    ((2, 3), 300, 64, 64, "float32"), ((2,), 257, 128, 128, "float32"), ((2,), 130, 64, 128, "float64"),
    ((1,), 100, 256, 256, "float64"), ((3,), 1, 80, 48, "float32"), ((1,), 1000, 32, 16, "float32")])
def test_gpu_shapes(variant, lead, T, Dk, Dv, dtype):
    check_case(variant, lead, T, Dk, Dv, dtype, decay_range=(-30.0, 0.0) if T == 1000 else (-1.0, -0.01))


@pytest.mark.gpu
def test_gpu_cupy_in_cupy_out():
    cp = pytest.importorskip("cupy")
    q, k, v, g = random_inputs("decayed", lead=(2,), T=100, Dk=64, Dv=64, dtype="float32")
    o = wb.decayed_attention(*(cp.asarray(x) for x in (q, k, v, g)), backend="numba:chunked")
    assert isinstance(o, cp.ndarray)
    assert rel(cp.asnumpy(o), ref.explicit_forward(q, k, v, g)[0]) < 1e-4


def test_chunked_weights_stay_accurate_when_the_chunk_cumsum_is_large(tiles):
    """Log decays down to -30: a float32 within-chunk cumsum reaches -1000 in a chunk of 64, where one rounding
    is ~3e-5 -- a 1e-5 relative error of exp(b_p - b_i) for nearby rows.  The kernel carries b as hi + lo (TwoSum),
    so the output stays at float32 rounding (on the GPU check at T=4097 the plain cumsum put dlog_decay at 1.4e-4)."""
    tiles(dict(ONE_TILE, chunk=64))
    lead, T, D = (1,), 100, 4
    q, k, v, g = random_inputs("decayed", lead=lead, T=T, Dk=D, Dv=D, dtype="float64", seed=3,
                               log_decay_range=(-30.0, 0.0))
    q, k, v = (x.astype(np.float16).astype(np.float64) for x in (q, k, v))         # exact in float32
    g = g.astype(np.float32).astype(np.float64)        # full float32 mantissas: their sums round
    do = np.random.default_rng(4).standard_normal((*lead, T, D)).astype(np.float16).astype(np.float64)
    got, want = run("chunked", *(x.astype(np.float32) for x in (q, k, v, g, do)))
    _, want = run("naive", q, k, v, g, do)                                          # float64: the truth
    errs = {n: rel(x, r) for n, x, r in zip(("o", "dq", "dk", "dv", "dlog_decay"), got, want)}
    # measured: 4e-8 (o, dq, dk, dv) and 1e-6 (dlog_decay); 3e-7..4e-7 and 8e-6 with a plain float32 cumsum
    assert max(errs[n] for n in ("o", "dq", "dk", "dv")) < 1.5e-7 and errs["dlog_decay"] < 4e-6, errs
