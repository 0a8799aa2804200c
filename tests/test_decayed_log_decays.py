"""The decayed NumPy references for any log decay in [-inf, 0]: -inf is an exact reset, strong decays stay
accurate in float32, and the gradients stay right next to resets."""
import numpy as np
import pytest

import workbench as wb
from workbench.check import rel_error
from workbench.inputs import random_inputs
from workbench.reference import decayed

BACKENDS = ["numpy:explicit", "numpy:chunked"]
TOL = {"float64": 1e-12, "float32": 1e-6}        # measured: ~1e-16 and ~2e-7


def _run(args, backend, dtype, do):
    out, pb = wb.vjp(wb.decayed_attention, *[a.astype(dtype) for a in args], backend=backend)
    return (out,) + pb(do.astype(dtype))


def _recurrence(q, k, v, g, scale=1.0):
    """o_t = scale S_t^T q_t with S_t = exp(g_t) S_{t-1} + k_t v_t^T, step by step in float64."""
    o = np.zeros(v.shape)
    S = np.zeros(q.shape[:-2] + (q.shape[-1], v.shape[-1]))
    for t in range(q.shape[-2]):
        S = np.exp(g[..., t])[..., None, None] * S + k[..., t, :, None] * v[..., t, None, :]
        o[..., t, :] = scale * np.einsum("...d,...de->...e", q[..., t, :], S)
    return o


def _log_decays(kind, shape, rng):
    if kind == "-1e4":
        return np.full(shape, -1e4)
    if kind == "U[-1e4,0]":
        return rng.uniform(-1e4, 0, shape)
    if kind == "-1e4 or U[-1,0]":
        return np.where(rng.random(shape) < 0.3, -1e4, rng.uniform(-1, 0, shape))
    if kind == "-inf or U[-1,0]":
        return np.where(rng.random(shape) < 0.03, -np.inf, rng.uniform(-1, 0, shape))
    if kind == "-inf, -1e4 or U[-0.1,0]":
        u = rng.random(shape)
        return np.where(u < 0.1, -np.inf, np.where(u < 0.4, -1e4, rng.uniform(-0.1, 0, shape)))
    raise ValueError(kind)


KINDS = ["-1e4", "U[-1e4,0]", "-1e4 or U[-1,0]", "-inf or U[-1,0]", "-inf, -1e4 or U[-0.1,0]"]


@pytest.mark.parametrize("kind", KINDS)
def test_any_log_decay_in_minus_inf_to_zero_is_accurate(kind):
    """Both references, float64 and float32 (chunked: within-chunk decays summed from the g they span), against
    the float64 explicit reference; the explicit forward against the step-by-step recurrence."""
    rng = np.random.default_rng(5)
    q, k, v, _ = random_inputs("decayed", (2,), 300, 8, 6, seed=5)
    g = _log_decays(kind, q.shape[:-1], rng)
    do = rng.standard_normal(v.shape).astype(np.float16).astype(np.float64)
    ref = _run((q, k, v, g), "numpy:explicit", "float64", do)
    assert all(np.isfinite(x).all() for x in ref)
    assert rel_error(ref[0], _recurrence(q, k, v, g)) < 1e-13
    for backend in BACKENDS:
        for dtype in ("float64", "float32"):
            res = _run((q, k, v, g), backend, dtype, do)
            for name, x, r in zip(("out", "dq", "dk", "dv", "dlog_decay"), res, ref):
                assert np.isfinite(x).all(), (backend, dtype, name)
                assert rel_error(x, r) <= TOL[dtype], (backend, dtype, name, rel_error(x, r))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("t0", [1, 64, 100])            # 64: on a chunk boundary of the chunked reference
def test_minus_inf_resets_the_state(backend, dtype, t0):
    """With g_t0 = -inf, the output and every gradient equal those of two separate runs, [0, t0) and [t0, T):
    nothing before t0 reaches any output from t0 on, and dg_t0 = 0 exactly."""
    T = 150
    q, k, v, g = random_inputs("decayed", (2,), T, 5, 4, seed=t0)
    g[:, t0] = -np.inf
    g[:, t0 + 17] = -np.inf                              # a second reset inside the later run
    do = np.random.default_rng(t0).standard_normal(v.shape)
    whole = _run((q, k, v, g), backend, dtype, do)
    parts = [_run(tuple(a[:, sl] for a in (q, k, v, g)), backend, dtype, do[:, sl])
             for sl in (slice(0, t0), slice(t0, T))]
    for name, x, a, b in zip(("out", "dq", "dk", "dv", "dlog_decay"), whole, *parts):
        assert np.isfinite(x).all(), name
        joined = np.concatenate([a, b], axis=1)
        assert rel_error(x, joined) <= TOL[dtype], (name, rel_error(x, joined))
    dg = whole[-1]
    assert (dg[:, t0] == 0).all() and (dg[:, t0 + 17] == 0).all()
    assert (np.abs(dg[:, t0 + 1:t0 + 17]) > 0).all()     # and only there


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_next_to_resets_match_central_differences(backend):
    """Finite differences in every argument, g perturbed only where it is finite (the -inf entries stay
    -inf); at the resets the gradient is exactly 0."""
    rng = np.random.default_rng(6)
    q, k, v, _ = random_inputs("decayed", (2,), 40, 3, 4, seed=6)
    g = rng.uniform(-2, 0, q.shape[:-1])
    resets = np.zeros(g.shape, bool)
    resets[0, [3, 17, 18]] = resets[1, [0, 39]] = True
    g[resets] = -np.inf
    do = rng.standard_normal(v.shape)
    args = [q, k, v, g]
    _, pb = wb.vjp(wb.decayed_attention, *args, backend=backend, scale=0.7)
    grads = pb(do)
    assert (grads[3][resets] == 0).all()
    for i, (a, grad) in enumerate(zip(args, grads)):
        u = rng.standard_normal(a.shape)
        if i == 3:
            u[resets] = 0.0
        h = 1e-5

        def f(x):
            xs = list(args)
            xs[i] = x
            return np.sum(wb.decayed_attention(*xs, backend=backend, scale=0.7) * do)
        fd = (f(a + h * u) - f(a - h * u)) / (2 * h)
        assert abs(fd - np.sum(grad * u)) <= 1e-7 * max(1.0, abs(fd)), (i, fd, np.sum(grad * u))


def test_log_decay_matrix_never_subtracts_cumulative_sums():
    """L_ti = sum_{i<j<=t} g_j is summed from the g it spans: exact for tiny decays after huge ones (where
    G_t - G_i of float32 cumulative sums is off by whole units), -inf across a reset, never NaN."""
    g = np.array([[-1e6, -1e-3, -2e-3, -np.inf, -1e-3]], dtype=np.float32)
    L = decayed._log_decay_matrix(g)
    assert not np.isnan(L).any()
    assert L[0, 2, 1] == np.float32(-2e-3) and L[0, 2, 0] == np.float32(-1e-3) + np.float32(-2e-3)
    assert L[0, 1, 0] == np.float32(-1e-3) and L[0, 4, 3] == np.float32(-1e-3)
    assert np.isneginf(L[0, 3, :3]).all() and np.isneginf(L[0, 4, :3]).all()
    assert np.isneginf(L[0][np.triu_indices(5, 1)]).all() and (np.diagonal(L[0]) == 0).all()
