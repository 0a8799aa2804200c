"""Numba linear attention (naive and chunked) against the float64 explicit NumPy reference, through the public
API, for every feature map, normalize on and off, causal and not.  On a CPU machine this runs on Numba's CUDA
simulator (tests/conftest.py): tiny shapes, the chunked core's chunks shrunk to 4 rows so T=11 spans three
chunks, the last one partial, and Dk, Dv over tiles of 4 (partial tiles); the chunked rung runs with one
segment per sequence and with segments of one chunk (state pass, scan, output pass)."""
import numpy as np
import pytest

import workbench as wb
from workbench.backends import numba_simulator
from workbench.inputs import random_inputs
from workbench.reference import linear as ref
from numba_cases import assert_matches

numba_linear = pytest.importorskip("kernels.numba.linear")
from kernels.numba import _chunked  # noqa: E402

pytestmark = pytest.mark.slow      # Numba CUDA simulator: minutes; -m "not slow" leaves them out
SMALL = {"chunk": 4, "block_k": 4, "block_v": 4, "threads": 16}


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch, small_buckets):
    """Tiny chunks and, on the simulator, small head-dim buckets (tests/conftest.py)."""
    monkeypatch.setitem(numba_linear.CONFIG, "rows", 8)
    if numba_simulator():
        for key, val in SMALL.items():
            monkeypatch.setitem(_chunked.CONFIG, key, val)



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
    assert out.shape == (*lead, T, Dv)
    assert_matches(variant, ("o", "dq", "dk", "dv"), (out, *grads), (o_ref, *g_ref), dtype)


@pytest.mark.parametrize("variant", ["naive", "chunked"])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("feature_map,normalize", [("identity", False), ("elu1", True), ("relu", True),
                                                   ("elu1", False)])
def test_feature_maps_float64(variant, causal, feature_map, normalize):
    run_case(variant, (2,), 11, 5, 4, "float64", causal, feature_map, normalize)


@pytest.mark.parametrize("causal", [True, False])
def test_chunked_segments_and_a_full_bucket_with_the_normaliser(causal, monkeypatch):
    """Segments of one chunk (state pass, scan, output pass), and Dv = the bucket (8 on the simulator) with
    normalize: the core's operand [v, 1] is one wider than the bucket (the plain family's state has room)."""
    monkeypatch.setitem(_chunked.CONFIG, "segment_chunks", 1)
    run_case("chunked", (2,), 11, 8, 8, "float64", causal, "relu", True, scale=0.5)


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


def test_core_tiles_fit_device_limits():
    """The plain family (linear) in every head-dim bucket, both dtypes: static shared memory <= 48 KB with its
    extra state rows, and the Da tile divides the bucket."""
    for itemsize in (4, 8):
        for DB in (8, 16, 32, 64, 128, 256):
            C, BK, BV, NT = _chunked.tiles(DB, 1, itemsize, _chunked.PLAIN)
            assert _chunked.shared_bytes(DB, 1, C, BK, BV, itemsize, _chunked.PLAIN) <= 48 * 1024
            assert min(C, BK, BV) >= 1 and NT <= 1024 and DB % BK == 0


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
    monkeypatch.setitem(numba_linear.CONFIG, "rows", 64)
    for T, Dk, Dv in [(127, 64, 64), (200, 128, 128), (65, 80, 48)]:
        run_case(variant, (2,), T, Dk, Dv, "float32", causal, "elu1", True)
