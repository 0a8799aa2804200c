"""Hopper's warpgroup MMA as kernels/cuda/wgmma.cuh uses it (swizzled tiles, descriptors, register fragments,
accumulate or not), through kernels/cuda/wgmma_check.cu, against NumPy.  On an H100 / H200 this checks wgmma.cuh
against the hardware; in the CUDA emulator (scripts/cuda_emulate.py runs these functions) it checks the emulator's
model of the instruction against the same NumPy products, so the two agree wherever both pass.  GPU only
(compute capability 9.0)."""
import numpy as np
import pytest

pytestmark = pytest.mark.gpu

# 64-term float32 sums of products of values in [-2, 2): rounding errors of ~1e-5; a wrong layout or descriptor
# moves elements by O(1)
TOL = 2e-3


def _needs_sm90a():
    from kernels.cupy import _module
    if not _module.sm90a():
        pytest.skip("wgmma needs compute capability 9.0")


def _tiles(dtype, n, seed):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-2, 2, (2, n, 64, 64))
    if dtype == "bfloat16":
        import ml_dtypes
        x16 = x.astype(ml_dtypes.bfloat16)
    else:
        x16 = x.astype(np.float16)
    return x16[0], x16[1]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("ta,tb,rs", [(False, False, False), (False, True, False), (True, False, False),
                                      (True, True, False), (False, True, True), (True, True, True),
                                      (False, False, True), (True, False, True)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_product_matches_numpy(dtype, ta, tb, rs, accumulate):
    """A = a or a^T (ta), B = b^T or b (tb), A from shared memory or registers (rs); c = A B or c0 + A B."""
    import cupy as cp
    from kernels.cupy import wgmma_check
    _needs_sm90a()
    n = 3
    a16, b16 = _tiles(dtype, n, seed=7 * ta + 3 * tb + rs + 11 * accumulate)
    a64, b64 = a16.astype(np.float64), b16.astype(np.float64)
    A = np.swapaxes(a64, 1, 2) if ta else a64
    Bm = b64 if tb else np.swapaxes(b64, 1, 2)
    c0 = np.random.default_rng(5).uniform(-4, 4, (n, 64, 64)).astype(np.float32) if accumulate else None
    want = A @ Bm + (c0.astype(np.float64) if accumulate else 0.0)
    got = wgmma_check.product(cp.asarray(a16), cp.asarray(b16), ta=ta, tb=tb, rs=rs,
                              c0=None if c0 is None else cp.asarray(c0))
    got = np.asarray(cp.asnumpy(got), np.float64)
    err = np.abs(got - want)
    assert np.isfinite(got).all(), "unwritten or NaN elements"
    assert err.max() <= TOL * max(1.0, np.abs(want).max() / 8), (
        f"max error {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}")


def test_product_refuses_other_shapes_and_dtypes():
    import cupy as cp
    from kernels.cupy import wgmma_check
    _needs_sm90a()
    a = cp.zeros((1, 64, 64), cp.float16)
    with pytest.raises(ValueError, match=r"\(n, 64, 64\)"):
        wgmma_check.product(a[:, :32], a[:, :32])
    with pytest.raises(TypeError, match="float16 or bfloat16"):
        wgmma_check.product(a.astype(cp.float32), a.astype(cp.float32))
