"""Numba linear attention (naive and chunked) against the float64 explicit NumPy reference, through the public
API, for every feature map, normalize on and off, causal and not.  On a CPU machine this runs on Numba's CUDA
simulator (tests/conftest.py): tiny shapes, chunks shrunk to 4 rows so T=11 spans three chunks, the last one
partial, and the staged column tile (db=3) does not divide the head dims."""
import numpy as np
import pytest

import workbench as wb
from workbench import registry
from workbench.check import rel_error
from workbench.backends import numba_simulator
from workbench.inputs import random_inputs
from workbench.reference import linear as ref

numba_linear = pytest.importorskip("kernels.numba.linear")
from kernels.numba import _jit  # noqa: E402

pytestmark = pytest.mark.slow      # Numba CUDA simulator: minutes; -m "not slow" leaves them out
TOL = registry.TOLERANCE          # the library's relative-error tolerance per dtype
SMALL = {"chunk_float32": 4, "chunk_float64": 4, "block_cols": 3, "threads": 16, "rows": 8}


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """Tiny chunks; on the simulator also head-dim buckets of 8 and 16 with skip groups of 4 (GPU: 64/128/256
    and 16), so that a bucket holds partial groups and groups skipped at run time."""
    for key, val in SMALL.items():
        monkeypatch.setitem(numba_linear.CONFIG, key, val)
    if numba_simulator():
        monkeypatch.setattr(_jit, "BUCKETS", (8, 16))
        monkeypatch.setattr(_jit, "GROUP", 4)



def run_case(variant, lead, T, Dk, Dv, dtype, causal, feature_map="identity", normalize=False, scale=1.0,
             seed=0):
    q, k, v = random_inputs("linear", lead=lead, T=T, Dk=Dk, Dv=Dv, dtype=dtype, seed=seed,
                            feature_map=feature_map)
    do = np.random.default_rng(seed + 1).standard_normal((*lead, T, Dv)).astype(dtype)
    opts = dict(causal=causal, feature_map=feature_map, normalize=normalize, scale=scale)
    out, pull = wb.vjp(wb.linear_attention, q, k, v, backend=f"numba:{variant}", **opts)
    grads = pull(do)
    o_ref, ctx = ref.explicit_forward(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64),
                                      eps=1e-6, **opts)
    g_ref = ref.explicit_backward(ctx, do.astype(np.float64))
    assert out.dtype == np.dtype(dtype) and out.shape == (*lead, T, Dv)
    errs = {"o": rel_error(out, o_ref)}
    errs.update({n: rel_error(g, r) for n, g, r in zip(("dq", "dk", "dv"), grads, g_ref)})
    for name, err in errs.items():
        assert np.isfinite(err) and err < TOL[dtype], (variant, name, err, errs)


@pytest.mark.parametrize("variant", ["naive", "chunked"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("feature_map,normalize", [("identity", False), ("elu1", True), ("relu", True),
                                                   ("elu1", False)])
def test_feature_maps_float64(variant, causal, feature_map, normalize):
    run_case(variant, (2,), 11, 5, 4, "float64", causal, feature_map, normalize)


@pytest.mark.parametrize("variant", ["naive", "chunked"])
def test_leading_dims_float32(variant):
    run_case(variant, (2, 3), 9, 3, 5, "float32", True, "elu1", True, scale=0.5)


@pytest.mark.parametrize("variant", ["naive", "chunked"])
@pytest.mark.parametrize("causal", [True, False])
def test_single_position(variant, causal):
    run_case(variant, (2,), 1, 4, 3, "float64", causal, "relu", True)


def test_chunked_chunk_boundary_exact_multiple():
    """T = 8: an exact multiple of the chunk (no partial chunk), identity map, no normalisation."""
    run_case("chunked", (1,), 8, 4, 6, "float64", True)


def test_chunk_size_fits_shared_memory():
    for dt in (np.dtype(np.float32), np.dtype(np.float64)):
        C, DB = numba_linear._chunk_size(dt)
        assert (2 * C * C + 2 * C * DB) * dt.itemsize <= numba_linear.SHARED_BYTES


def test_nan_propagates_without_crash():
    q, k, v = random_inputs("linear", lead=(1,), T=9, Dk=3, Dv=3, dtype="float64")
    k[0, 5, 0] = np.nan
    out = wb.linear_attention(q, k, v, backend="numba:chunked", causal=True)
    assert np.isfinite(out[0, :5]).all()          # rows before position 5 never see it
    assert np.isnan(out[0, 5:]).all()


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["naive", "chunked"])
@pytest.mark.parametrize("causal", [True, False])
def test_gpu_real_chunks(variant, causal, monkeypatch):
    """On a GPU: default chunks, T not a multiple of 64, head dims 64, 128 and odd."""
    defaults = {"chunk_float32": 64, "chunk_float64": 32, "block_cols": 16, "threads": 128, "rows": 64}
    for key, val in defaults.items():
        monkeypatch.setitem(numba_linear.CONFIG, key, val)
    for T, Dk, Dv in [(127, 64, 64), (200, 128, 128), (65, 80, 48)]:
        run_case(variant, (2,), T, Dk, Dv, "float32", causal, "elu1", True)
