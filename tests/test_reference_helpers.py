"""Each gradient helper of the NumPy references on its own: against central differences of the function it
differentiates, or against the sum it stands for written out as loops."""
import numpy as np
import pytest

from workbench.reference import common, decayed, linear, zeros


def _central(f, x, h=1e-6):
    """The gradient of the scalar f at x, element by element."""
    g = np.zeros_like(x)
    for j in range(x.size):
        e = np.zeros_like(x)
        e.flat[j] = h
        g.flat[j] = (f(x + e) - f(x - e)) / (2 * h)
    return g


@pytest.mark.parametrize("name", ["identity", "relu", "elu1"])
def test_feature_map_grad_is_the_derivative_of_the_feature_map(name):
    x = np.random.default_rng(0).uniform(-3, 3, (4, 5))
    x = np.where(np.abs(x) < 1e-3, 0.5, x)                   # away from the kink of relu
    d = (common.feature_map(x + 1e-6, name) - common.feature_map(x - 1e-6, name)) / 2e-6     # elementwise
    np.testing.assert_allclose(common.feature_map_grad(x, name), d, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", ["identity", "relu", "elu1"])
def test_feature_map_by_parts_is_the_feature_map_bit_for_bit(name):
    """The linear-time reference's own form of phi: the same values, edge values included."""
    x = np.concatenate([np.random.default_rng(5).standard_normal(50) * 3,
                        [0.0, -0.0, 1e-300, -1e-300, np.inf, -np.inf, np.nan, 50.0, -800.0]])
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(common.feature_map_by_parts(x, name), common.feature_map(x, name))
    assert common.feature_map_by_parts(x.astype(np.float32), name).dtype == np.float32
    with pytest.raises(ValueError, match="unknown feature_map 'gelu'"):
        common.feature_map_by_parts(x, "gelu")


def test_dlog_decay_sums_the_pairs_that_span_each_position():
    rng = np.random.default_rng(1)
    N, C = 2, 7
    W = np.tril(rng.standard_normal((N, C, C)))
    want = np.zeros((N, C))
    for n in range(N):
        for j in range(C):
            want[n, j] = sum(W[n, t, i] for t in range(j, C) for i in range(j))
    np.testing.assert_allclose(decayed._dlog_decay(W), want, rtol=1e-13, atol=1e-14)


def test_dlog_decay_is_the_gradient_through_the_log_decay_matrix():
    """dg of sum(W0 * exp(L(g))) is _dlog_decay(W0 * exp(L(g))): L_ti = sum_{i<j<=t} g_j."""
    rng = np.random.default_rng(2)
    g = rng.uniform(-1, 0, (2, 6))
    W0 = rng.standard_normal((2, 6, 6))

    def f(x):
        return np.sum(W0 * np.exp(decayed._log_decay_matrix(x)))
    np.testing.assert_allclose(decayed._dlog_decay(W0 * np.exp(decayed._log_decay_matrix(g))), _central(f, g),
                               rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("n_gates", [2, 3])
@pytest.mark.parametrize("helper", [zeros._gate_grads, zeros._gate_grads_by_coefficients],
                         ids=["explicit", "by_coefficients"])
def test_gate_grads_are_the_gradient_of_the_weights(helper, causal, n_gates):
    """With dR fixed, d/dgates sum_ti dR_ti r_ti(gates) from the row sums U, V, Z (as both references form
    them) equals the central differences of the explicit weights r."""
    rng = np.random.default_rng(3)
    N, T = 2, 7
    s, gates = rng.standard_normal((N, T)), rng.standard_normal((N, T, n_gates))
    mask = common.causal_mask(T, causal)
    dR = np.where(mask, rng.standard_normal((N, T, T)), 0)
    _, p, P, n = zeros._explicit_weights(s, gates, causal)
    U, V, Z = (dR * p).sum(-1), (dR @ s[..., None])[..., 0], dR.sum(-1)

    def f(x):
        return np.sum(dR * zeros._explicit_weights(s, x, causal)[0])
    np.testing.assert_allclose(helper(gates, U, V, Z, P, np.broadcast_to(n, s.shape)), _central(f, gates),
                               rtol=1e-7, atol=1e-9)


def test_dnum_dden_is_the_gradient_of_num_over_den():
    rng = np.random.default_rng(4)
    num, do = rng.standard_normal((2, 5, 3)), rng.standard_normal((2, 5, 3))
    den = rng.uniform(0.5, 2, (2, 5))
    dnum, dden = linear._dnum_dden(do, num, den)
    np.testing.assert_allclose(dnum, _central(lambda x: np.sum(do * x / den[..., None]), num), rtol=1e-7)
    np.testing.assert_allclose(dden, _central(lambda x: np.sum(do * num / x[..., None]), den), rtol=1e-7)
    assert linear._dnum_dden(do, num, None) == (do, None)
