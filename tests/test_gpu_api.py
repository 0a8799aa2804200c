"""Array kinds on a GPU machine: CuPy in gives CuPy out for every backend, NumPy in gives NumPy out."""
import numpy as np
import pytest

import workbench as wb
from workbench import backends, registry
from workbench.check import rel_error
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
    """Every usable float32 variant, given CuPy arrays, returns CuPy float32 output and gradients whose values
    are the float64 explicit reference's (relative error within the float32 tolerance)."""
    args = random_inputs(op, (2,), 40, 16, 8, "float32", seed=1)
    do = np.random.default_rng(2).standard_normal((2, 40, 8)).astype(np.float32)
    ref, ref_pullback = wb.vjp(wb.PUBLIC_OPS[op], *[a.astype(np.float64) for a in args], backend="numpy:explicit")
    refs = (ref,) + ref_pullback(do.astype(np.float64))
    names = ("out",) + tuple("d" + n for n in registry.ARRAY_ARGS[op])
    tol = registry.TOLERANCE["float32"]
    checked = []
    for v in registry.variants(op):
        if not backends.status(v.backend)[0] or "float32" not in v.dtypes:
            continue
        out, pb = wb.vjp(wb.PUBLIC_OPS[op], *[cp.asarray(a) for a in args], backend=v.key)
        for name, x, r in zip(names, (out,) + pb(cp.asarray(do)), refs):
            assert isinstance(x, cp.ndarray) and x.dtype == np.float32 and x.shape == r.shape, (v.key, name)
            err = rel_error(x.get(), r)
            assert err < tol, (v.key, name, err)
        checked.append(v.key)
    assert any(k.startswith("cupy:") for k in checked), checked


def test_auto_backend_follows_the_array_kind(cp):
    args = random_inputs("softmax", (2,), 33, 16, seed=2)
    out = wb.softmax_attention(*[cp.asarray(a) for a in args])          # auto: the CuPy default variant
    assert isinstance(out, cp.ndarray)
    np.testing.assert_allclose(out.get(), wb.softmax_attention(*args), rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="mixed array kinds"):
        wb.softmax_attention(cp.asarray(args[0]), *args[1:])
