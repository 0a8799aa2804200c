"""Array kinds on a GPU machine: CuPy in gives CuPy out for every backend, NumPy in gives NumPy out."""
import numpy as np
import pytest

import workbench as wb
from workbench import backends, registry
from workbench.inputs import random_inputs

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cp():
    mod = backends.cupy_module()
    if mod is None:
        pytest.skip("needs CuPy and a GPU")
    return mod


@pytest.mark.parametrize("op", registry.OPS)
def test_cupy_in_cupy_out_for_every_usable_variant(cp, op):
    args = random_inputs(op, (2,), 40, 16, 8, "float32", seed=1)
    ref = wb.PUBLIC_OPS[op](*args, backend="numpy:explicit")
    for v in registry.variants(op):
        if not backends.status(v.backend)[0] or "float32" not in v.dtypes:
            continue
        out, pb = wb.vjp(wb.PUBLIC_OPS[op], *[cp.asarray(a) for a in args], backend=v.key)
        assert isinstance(out, cp.ndarray) and out.dtype == np.float32, v.key
        grads = pb(cp.ones_like(out))
        assert all(isinstance(g, cp.ndarray) for g in grads), v.key
        assert np.linalg.norm(out.get() - ref) / np.linalg.norm(ref) < 1e-4, v.key


def test_auto_backend_follows_the_array_kind(cp):
    args = random_inputs("softmax", (2,), 33, 16, seed=2)
    out = wb.softmax_attention(*[cp.asarray(a) for a in args])          # auto: the CuPy default variant
    assert isinstance(out, cp.ndarray)
    np.testing.assert_allclose(out.get(), wb.softmax_attention(*args), rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="mixed array kinds"):
        wb.softmax_attention(cp.asarray(args[0]), *args[1:])
