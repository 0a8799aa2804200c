"""State and packed sequences on a GPU machine: the steps on CuPy arrays, and every GPU variant that declares
the "state" or "packed" feature against the float64 reference (the cells of `check`), plus two calls with
the state handed over against one call, to the dtype tolerance."""
import numpy as np
import pytest

import workbench as wb
from workbench import backends, check, registry, state as wst
from workbench.inputs import random_inputs, random_state

from test_gpu_api import cp  # noqa: F401  (the CuPy module, or a skip)

pytestmark = pytest.mark.gpu


STEP_CASES = [("softmax", {}), ("linear", dict(feature_map="elu1", normalize=True)), ("decayed", dict(scale=0.5)),
              ("zeros", {})]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("op,options", STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_steps_on_cupy_arrays_equal_the_numpy_steps(cp, op, options, dtype):
    """Ten steps on CuPy arrays give CuPy outputs and states equal to the same steps on NumPy arrays."""
    arrays = random_inputs(op, (2, 3), 10, 16, 8, dtype, seed=3,
                           **({"feature_map": "elu1"} if options.get("feature_map") else {}))
    step = wb.steps.STEPS[op]
    st_np = st_cp = None
    for t in range(10):
        tok = [a[..., t, :] if a.ndim == 4 else a[..., t] for a in arrays]
        o_np, st_np = step(*tok, st_np, **options)
        o_cp, st_cp = step(*[cp.asarray(a) for a in tok], st_cp, **options)
        assert isinstance(o_cp, cp.ndarray) and o_cp.dtype == np.dtype(dtype)
        np.testing.assert_allclose(o_cp.get().astype(np.float64), o_np.astype(np.float64), rtol=2e-3, atol=2e-3)
    for name, x in (vars(st_cp) if op == "softmax" else wst.fields(st_cp)).items():
        assert isinstance(x, cp.ndarray)
        np.testing.assert_allclose(x.get(), getattr(st_np, name), rtol=1e-4, atol=1e-4)


_FLAGS = {"state": dict(state=True), "packed": dict(packed=True), "state+packed": dict(state=True, packed=True)}
# one test per (variant, features, shape), so that the GPU test shards spread them (one test per shape over every
# variant ran for minutes: the Numba variants compile inside it)
_FEATURED = [pytest.param(v.op, v.key, name, id=f"{v.key}-{v.op}-{name}")
             for name, flags in _FLAGS.items() for v in registry.variants()
             if v.gpu and set(flags) <= v.features]


@pytest.mark.parametrize("T,Dk,Dv", [(1, 64, 64), (193, 64, 64), (300, 128, 80), (67, 32, 48)])
@pytest.mark.parametrize("op,key,features", _FEATURED)
def test_featured_gpu_variants_match_the_reference(op, key, features, T, Dk, Dv):
    """Each GPU variant declaring the features, in each of its dtypes, against the float64 explicit reference:
    output, final state, every gradient and the initial state's gradient (packed lengths 1, 63, 64, 65, ...)."""
    flags = _FLAGS[features]
    v = registry.get(op, *key.split(":"))
    if not backends.status(v.backend)[0]:
        pytest.skip(f"{v.backend} not usable here: {backends.status(v.backend)[1]}")
    failures = []
    for dtype in check.dtypes_for(v):
        for causal in check.causal_values(v.op):
            if flags.get("state") and not causal:
                continue
            for label, extra in check.option_grid(v.op, quick=True):
                kw = dict(extra)
                n_gates, ldr = kw.pop("n_gates", 2), kw.pop("log_decay_range", None)
                if kw.get("normalize") and T < 2:
                    continue
                if v.unsupported_reason(dict(kw, causal=causal), {"q": (2, T, Dk), "v": (2, T, Dv)}):
                    continue
                res = check.compare(v.op, v.key, (2,), T, Dk, Dv, dtype, options=kw, n_gates=n_gates,
                                    log_decay_range=ldr, causal=causal, **flags)
                if not res["ok"]:
                    failures.append((v.key, dtype, causal, label, {k: e for k, e in res.items()
                                                                   if isinstance(e, float) and e > res["tol"]}))
    assert not failures, failures


_STATEFUL = [pytest.param(v.op, v.key, id=f"{v.key}-{v.op}") for v in registry.variants()
             if v.gpu and "state" in v.features and "float32" in v.dtypes]


@pytest.mark.parametrize("split", [1, 64, 100])
@pytest.mark.parametrize("op,key", _STATEFUL)
def test_two_calls_equal_one_call_on_featured_gpu_variants(cp, op, key, split):
    """Two calls with the state handed over equal one call (output, final state, gradients, the initial
    state's gradient), relative difference within the variant's float32 tolerance."""
    T = 200
    v = registry.get(op, *key.split(":"))
    if not backends.status(v.backend)[0]:
        pytest.skip(f"{v.backend} not usable here: {backends.status(v.backend)[1]}")
    fn = wb.PUBLIC_OPS[op]
    arrays = [cp.asarray(a) for a in random_inputs(op, (2,), T, 64, 64, "float32", seed=split)]
    init = wst.map_state(cp.asarray, random_state(op, (2,), 64, 64, "float32", seed=split))
    rng = np.random.default_rng(split)
    dout = cp.asarray(rng.standard_normal((2, T, 64)).astype(np.float32))
    dfin = wst.map_state(lambda a: cp.asarray(rng.standard_normal(a.shape).astype(np.float32)), init)

    def cut(a, b):
        return [x[:, a:b] for x in arrays]
    (o, fin), pb = wb.vjp(fn, *arrays, initial_state=init, return_state=True, backend=v.key)
    grads = pb(dout, dfin)
    (o1, fin1), pb1 = wb.vjp(fn, *cut(0, split), initial_state=init, return_state=True, backend=v.key)
    (o2, fin2), pb2 = wb.vjp(fn, *cut(split, T), initial_state=fin1, return_state=True, backend=v.key)
    g2 = pb2(dout[:, split:], dfin)
    g1 = pb1(dout[:, :split], g2[-1])
    tol = v.tolerance("float32")
    pairs = [("out", cp.concatenate([o1, o2], 1), o)]
    pairs += [(f"final.{n}", x, getattr(fin, n)) for n, x in wst.fields(fin2).items()]
    pairs += [(f"d{i}", cp.concatenate([a, b], 1), c) for i, (a, b, c) in enumerate(zip(g1[:-1], g2[:-1],
                                                                                      grads[:-1]))]
    pairs += [(f"dinit.{n}", x, getattr(grads[-1], n)) for n, x in wst.fields(g1[-1]).items()]
    for name, a, b in pairs:
        assert check.rel_error(a.get(), b.get().astype(np.float64)) < tol, (v.key, name)
