"""The NumPy references: finite-difference gradients, explicit vs linear-time agreement, properties, stability."""
import numpy as np
import pytest

import workbench as wb
from workbench import registry
from workbench.check import rel_error
from workbench.inputs import default_options, random_inputs
from workbench.reference import decayed, linear, softmax, zeros

# (op, options, input kwargs): every option combination the references support
CASES = [
    ("softmax", dict(causal=True), {}),
    ("softmax", dict(causal=False, scale=0.7), {}),
    # normalised inputs are drawn shifted positive (as for elu1/relu) so the denominator stays away from 0
    *[("linear", dict(causal=c, feature_map=f, normalize=n), dict(feature_map="relu" if n else f))
      for c in (True, False) for f in ("identity", "elu1", "relu") for n in (False, True)],
    ("decayed", dict(scale=0.9), {}),
    ("decayed", dict(), dict(log_decay_range=(-30.0, 0.0))),
    *[("zeros", dict(causal=c), dict(n_gates=g)) for c in (True, False) for g in (2, 3)],
]
IDS = [f"{op}-{'-'.join(f'{k}={v}' for k, v in o.items())}-{'-'.join(map(str, i.values()))}" for op, o, i in CASES]


def _opts(op, options):
    o = default_options(op, **options)
    if op == "decayed":
        o.pop("causal", None)
    return o


@pytest.mark.parametrize("op,options,inkw", CASES, ids=IDS)
def test_gradients_match_central_differences(op, options, inkw):
    """<grad, u> against (f(x+hu) - f(x-hu)) / 2h for a random direction u per argument, f = sum(out * do)."""
    fn = wb.PUBLIC_OPS[op]
    arrays = random_inputs(op, (2,), 9, 3, 4, "float64", seed=3, **inkw)
    opts = _opts(op, options)
    out, pullback = wb.vjp(fn, *arrays, backend="numpy:explicit", **opts)
    rng = np.random.default_rng(11)
    do = rng.standard_normal(out.shape)
    grads = pullback(do)
    assert len(grads) == len(arrays)
    for i, (a, g) in enumerate(zip(arrays, grads)):
        assert g.shape == a.shape
        u = rng.standard_normal(a.shape)
        h = 1e-5

        def f(x):
            args = list(arrays)
            args[i] = x
            return np.sum(fn(*args, backend="numpy:explicit", **opts) * do)
        fd = (f(a + h * u) - f(a - h * u)) / (2 * h)
        an = np.sum(g * u)
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(fd)), (i, fd, an)


@pytest.mark.parametrize("op,options,inkw", CASES, ids=IDS)
@pytest.mark.parametrize("T,chunk", [(1, 4), (37, 8), (64, 16), (45, 64)])
def test_linear_time_form_matches_explicit(op, options, inkw, T, chunk):
    """The chunked/tiled reference (several chunks, T not a multiple of the chunk) equals the explicit one."""
    mod = dict(softmax=softmax, linear=linear, decayed=decayed, zeros=zeros)[op]
    arrays = random_inputs(op, (3,), T, 5, 6, "float64", seed=T, **inkw)
    opts = _opts(op, options)
    if op == "softmax" and opts["scale"] is None:       # the public op resolves the default 1/sqrt(Dk)
        opts["scale"] = 1 / np.sqrt(5)
    if options.get("normalize") and T == 1:
        pytest.skip("normalised T=1 gradients vanish up to eps")
    fast_fwd = mod.tiled_forward if op == "softmax" else mod.chunked_forward
    fast_bwd = mod.tiled_backward if op == "softmax" else mod.chunked_backward
    kw = dict(block=chunk) if op == "softmax" else dict(chunk=chunk)
    o_ref, ctx_ref = mod.explicit_forward(*arrays, **opts)
    o, ctx = fast_fwd(*arrays, **opts, **kw)
    do = np.random.default_rng(1).standard_normal(o.shape)
    np.testing.assert_allclose(o, o_ref, rtol=1e-10, atol=1e-10)
    for g, g_ref in zip(fast_bwd(ctx, do), mod.explicit_backward(ctx_ref, do)):
        np.testing.assert_allclose(g, g_ref, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", ["numpy:explicit", "numpy:chunked"])
def test_softmax_rows_are_convex(backend):
    T = 11
    q, k, _ = random_inputs("softmax", (2,), T, 4, seed=0)
    P = wb.softmax_attention(q, k, np.broadcast_to(np.eye(T), (2, T, T)).copy(), backend=backend)
    assert np.all(P >= 0)
    np.testing.assert_allclose(P.sum(-1), 1, rtol=1e-12)
    assert np.all(np.triu(P[0], 1) == 0)          # causal: nothing from the future


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("backend", ["numpy:explicit", "numpy:chunked"])
def test_zeros_rows_sum_to_zero_with_two_gates(causal, backend):
    T = 13
    rng = np.random.default_rng(4)
    q = k = np.ones((2, T, 1))
    R = wb.zeros_attention(q, k, np.broadcast_to(np.eye(T), (2, T, T)).copy(), rng.standard_normal((2, T)),
                           rng.standard_normal((2, T, 2)), causal=causal, backend=backend)
    np.testing.assert_allclose(R.sum(-1), 0, atol=1e-12)
    assert (R < 0).any() and (R > 0).any()      # signed weights: contrastive combinations are possible
    gates3 = np.concatenate([rng.standard_normal((2, T, 2)), np.full((2, T, 1), 0.5)], -1)
    R3 = wb.zeros_attention(q, k, np.broadcast_to(np.eye(T), (2, T, T)).copy(), rng.standard_normal((2, T)),
                            gates3, causal=causal, backend=backend)
    np.testing.assert_allclose(R3.sum(-1), np.tanh(0.5), atol=1e-12)   # the zero-order gate's total


@pytest.mark.parametrize("backend", ["numpy:explicit", "numpy:chunked"])
def test_decayed_without_decay_is_unnormalised_linear(backend):
    q, k, v, _ = random_inputs("decayed", (2, 2), 70, 5, 3, seed=2)
    o = wb.decayed_attention(q, k, v, np.zeros(q.shape[:-1]), scale=0.5, backend=backend)
    o_lin = wb.linear_attention(q, k, v, causal=True, scale=0.5, backend=backend)
    np.testing.assert_allclose(o, o_lin, rtol=1e-12, atol=1e-12)


def test_softmax_huge_logits_are_stable():
    q, k, v = random_inputs("softmax", (2,), 70, 8, seed=5)
    q = q * 3000          # logits of order 1e4
    for causal in (True, False):
        o_ref, pb_ref = wb.vjp(wb.softmax_attention, q, k, v, causal=causal, backend="numpy:explicit")
        o, pb = wb.vjp(wb.softmax_attention, q, k, v, causal=causal, backend="numpy:chunked")
        assert np.isfinite(o).all() and np.isfinite(o_ref).all()
        np.testing.assert_allclose(o, o_ref, rtol=1e-9, atol=1e-9)
        do = np.ones_like(o)
        for g, gr in zip(pb(do), pb_ref(do)):
            assert np.isfinite(g).all()
            np.testing.assert_allclose(g, gr, rtol=1e-6, atol=1e-6 * np.abs(gr).max())


@pytest.mark.parametrize("causal", [True, False])
def test_zeros_extreme_radial_logits_are_stable(causal):
    q, k, v, s, gates = random_inputs("zeros", (2,), 150, 6, seed=6)
    rng = np.random.default_rng(0)
    s = rng.choice([-1e3, 1e3], s.shape) + rng.standard_normal(s.shape)
    s[:, 0] = -1e3        # the running max must grow by ~2e3 later on
    o_ref, pb_ref = wb.vjp(wb.zeros_attention, q, k, v, s, gates, causal=causal, backend="numpy:explicit")
    o, pb = wb.vjp(wb.zeros_attention, q, k, v, s, gates, causal=causal, backend="numpy:chunked")
    assert np.isfinite(o).all()
    np.testing.assert_allclose(o, o_ref, rtol=1e-8, atol=1e-8 * np.abs(o_ref).max())
    do = rng.standard_normal(o.shape)
    for g, gr in zip(pb(do), pb_ref(do)):
        assert np.isfinite(g).all()
        np.testing.assert_allclose(g, gr, rtol=1e-7, atol=1e-7 * np.abs(gr).max())


def test_decayed_strong_decays_are_stable():
    q, k, v, g = random_inputs("decayed", (2,), 300, 6, seed=7, log_decay_range=(-30.0, 0.0))
    g[:, ::7] = 0.0
    o_ref, pb_ref = wb.vjp(wb.decayed_attention, q, k, v, g, backend="numpy:explicit")
    for dtype in ("float64", "float32"):
        tol = registry.TOLERANCE[dtype]
        args = [a.astype(dtype) for a in (q, k, v, g)]
        o, pb = wb.vjp(wb.decayed_attention, *args, backend="numpy:chunked")
        assert np.isfinite(o).all()
        assert rel_error(o, o_ref) < tol
        do = np.ones_like(o)
        for x, xr in zip(pb(do), pb_ref(np.ones_like(o_ref))):
            assert rel_error(x, xr) < tol


def test_nan_propagates_without_crashing():
    q, k, v = random_inputs("softmax", (1,), 20, 4, seed=8)
    q[0, 5, 0] = np.nan
    for backend in ("numpy:explicit", "numpy:chunked"):
        o = wb.softmax_attention(q, k, v, backend=backend)
        assert np.isnan(o[0, 5]).all() and np.isfinite(o[0, :5]).all()
