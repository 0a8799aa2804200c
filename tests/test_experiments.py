"""Experiments: theory vs docs/spec.md's check values and closed forms, rows vs theory, the claims' direction."""
import json
import math
import os

import numpy as np
import pytest

import workbench as wb
from experiments import _common as C
from experiments import sparsity as sp
from experiments import zeros_contrastive as zc
from experiments import zeros_dilution as zd
from workbench.inputs import random_inputs
from workbench.reference import decayed as ref_decayed, softmax as ref_softmax, zeros as ref_zeros
from workbench.reference.common import mT, sigmoid


# ============================================================================ theory
@pytest.mark.parametrize("t, want", [(1.0, 0.6128), (-1.0, 0.2053), (-3.0, 0.0167)])
def test_relu2_spec_check_values(t, want):
    assert sp.relu2_theory(t) == pytest.approx(want, abs=5e-5)
    assert sp.relu2_closed(t) == pytest.approx(want, abs=5e-5)


def test_other_spec_check_values():
    assert sp.linear_theory(1.0) == pytest.approx(0.8249, abs=5e-5)
    assert sp.decay_theory(0.9, 10) == pytest.approx(0.9579, abs=5e-5)
    assert sp.decay_theory(0.9, 100) == pytest.approx(0.4359, abs=5e-5)
    assert sp.relu2_theory(0.0) == pytest.approx(1 / math.sqrt(6), abs=1e-10)


def test_closed_forms_match_quadrature():
    for g in (0.0, 0.3, 1.0, 2.0, 3.5):
        for beta in (-2.0, 0.0, 1.5):                       # softmax S does not depend on beta
            assert sp.softmax_theory(g, beta) == pytest.approx(sp.softmax_closed(g), rel=1e-9)
    for t in np.linspace(-8, 4, 25):
        assert sp.relu2_theory(t) == pytest.approx(sp.relu2_closed(t), rel=1e-8)
    for t in np.linspace(-4, 4, 17):
        assert sp.linear_theory(t) == pytest.approx(sp.linear_closed(t), rel=1e-10)
        assert sp.linear_theory(t) == pytest.approx(sp.linear_theory(-t), rel=1e-10)      # even in t
    for lam in (0.5, 0.9, 0.999):
        for n in (1, 7, 100, 5000):
            assert sp.decay_theory(lam, n) == pytest.approx(sp.decay_closed(lam, n), rel=1e-9)


def test_relu2_tail_asymptotic_matches_quadrature_below_minus8():
    for t in (-8.0, -9.0, -10.0, -12.0, -15.0):
        quad = sp.sparsity_of(lambda e: np.maximum(t + e, 0.0) ** 2, kinks=(-t,))[0]
        assert sp.relu2_tail(t) == pytest.approx(quad, rel=1e-6)
        assert sp.relu2_theory(t) == pytest.approx(quad, rel=1e-6)
    assert sp.relu2_theory(-20.0) > 0 and sp.relu2_theory(-20.0) < sp.relu2_theory(-15.0)


def test_quadrature_against_scipy():
    integrate = pytest.importorskip("scipy.integrate")
    dens = lambda e: math.exp(-e * e / 2) / math.sqrt(2 * math.pi)       # noqa: E731
    g = sp.zeros_g(0.8, 0.3, 0.7)
    want = integrate.quad(lambda e: abs(g(np.array([e]))[0]) * dens(e), -30, 30, points=sp._sign_changes(g),
                          limit=200, epsabs=1e-13)[0]
    assert sp.normal_expect(lambda x: np.abs(g(x)), sp._sign_changes(g)) == pytest.approx(want, rel=1e-9)
    # q.k on the unit sphere: density (1-x^2)^((d-3)/2)
    for d in (3, 16, 64):
        w = lambda x: (1 - x * x) ** ((d - 3) / 2)                     # noqa: E731
        Z = integrate.quad(w, -1, 1)[0]
        m1 = integrate.quad(lambda x: abs(x) * w(x), -1, 1)[0] / Z
        m2 = integrate.quad(lambda x: x * x * w(x), -1, 1)[0] / Z
        assert sp.sphere_dot_sparsity(d) == pytest.approx(m1 / math.sqrt(m2), rel=1e-8)


def test_nonneg_forms():
    m, c = sp.feature_moments("relu", 0.3)                  # relu moments have a closed form
    a = 0.3
    mean = a * sp.Phi(a) + sp.phi(a)
    sec = (a * a + 1) * sp.Phi(a) + a * sp.phi(a)
    assert m == pytest.approx(mean, rel=1e-10) and c == pytest.approx(math.sqrt(sec - mean ** 2), rel=1e-10)
    g = np.array([0.5, 1.0, 2.0])
    assert sp.nonneg_iid(m, c, g) == pytest.approx(sp.nonneg_closed(g, np.full(3, m), c * c * np.eye(3)), rel=1e-12)
    # whatever the dimension, S >= m / sqrt(m^2 + c^2) (the one-hot query); elu1 never below exp(-1/2)
    for fm in ("relu", "elu1"):
        for mu in (-3.0, 0.0, 1.0):
            m, c = sp.feature_moments(fm, mu)
            for d in (1, 4, 64):
                assert sp.nonneg_theory(fm, mu, d) >= m / math.hypot(m, c) - 1e-12
    assert sp.nonneg_theory("elu1", -12.0, 1) == pytest.approx(math.exp(-0.5), abs=1e-6)
    assert sp.nonneg_theory("relu", -4.0, 1) < 0.01          # relu: sparse at low key SNR


def test_directions_of_the_claims():
    gam = np.linspace(0, 3, 31)
    S = [sp.softmax_theory(g) for g in gam]
    assert np.all(np.diff(S) < 0) and S[-1] < 0.012            # softmax: decreasing in gamma, -> 0
    t = np.linspace(-6, 4, 41)
    assert np.all(np.diff([sp.relu2_theory(x) for x in t]) > 0)
    lin = [sp.linear_theory(x) for x in np.linspace(-5, 5, 101)]
    assert min(lin) >= math.sqrt(2 / math.pi) - 1e-12            # identity-linear cannot focus
    for lam in (0.5, 0.9, 0.99):                                 # decay: S ~ sqrt((1+lam)/(1-lam)) n^-1/2
        n = 10 ** 6
        assert sp.decay_theory(lam, n) * math.sqrt(n) == pytest.approx(math.sqrt((1 + lam) / (1 - lam)), rel=1e-3)
    assert sp.decay_theory(0.9, 1000) < sp.decay_theory(0.9, 100) < sp.decay_theory(0.9, 10)


# ============================================================================ rows from the ops
def test_last_row_and_direct_rows_match_reference_weight_matrices():
    T = 12
    for op in ("softmax", "linear", "decayed", "zeros"):
        arrays = random_inputs(op, lead=(2,), T=T, Dk=4, Dv=1, seed=3)
        q, k = arrays[:2]
        if op == "softmax":
            W = ref_softmax._probs(q, k, True, 0.5)
            opts = dict(scale=0.5)
        elif op == "linear":
            W = np.tril(q @ mT(k))
            opts = dict()
        elif op == "decayed":
            W = (q @ mT(k)) * np.exp(ref_decayed._log_decay_matrix(arrays[3]))
            opts = dict()
        else:
            W = ref_zeros._explicit_weights(arrays[3], arrays[4], True)[0] * (q @ mT(k))
            opts = dict()
        np.testing.assert_allclose(C.last_row_weights(op, arrays, **opts), W[:, -1], rtol=1e-10, atol=1e-12)
        for t in (0, 5, T - 1):
            np.testing.assert_allclose(C.direct_row_weights(op, arrays, t, opts), W[:, t, :t + 1], rtol=1e-10,
                                       atol=1e-12)


def test_zeros_rows_sum_to_zero_with_two_gates():
    rng = np.random.default_rng(0)
    s = 2 * rng.standard_normal((3, 50))
    r2 = C.zeros_row_coefficients(s, rng.standard_normal((3, 2)))
    np.testing.assert_allclose(r2.sum(-1), 0, atol=1e-14)
    g3 = rng.standard_normal((3, 3))
    np.testing.assert_allclose(C.zeros_row_coefficients(s, g3).sum(-1), np.tanh(g3[:, 2]), atol=1e-14)
    r, _, _, _ = ref_zeros._explicit_weights(s, rng.standard_normal((3, 50, 2)), True)
    np.testing.assert_allclose(r.sum(-1), 0, atol=1e-13)
    assert (r2 < 0).any() and (r2 > 0).any()                   # signed
    _, parts = C.zeros_row_coefficients(s, np.zeros((3, 2)), parts=True)
    np.testing.assert_allclose(parts["zero"] + parts["first"] + parts["rest"], parts["p"], atol=1e-15)


def _agree(samples, theory, z=4.0, floor=0.0):
    m, se = C.mean_se(samples)
    assert abs(m - theory) <= z * se + floor, (m, se, theory)


def test_measured_rows_agree_with_theory_small():
    rng = np.random.default_rng(1)
    w = sp.measure_linear_rows(1.0, 2048, 8, rng)
    _agree(C.sparsity(w), sp.linear_theory(1.0))
    _agree(C.sparsity(np.maximum(w, 0) ** 2), sp.relu2_theory(1.0))
    _agree(sp.measure_softmax(0.5, 1024, 6, rng), sp.softmax_theory(0.5))
    _agree(sp.measure_nonneg("elu1", 0.0, 4, 2048, 8, rng), sp.nonneg_theory("elu1", 0.0, 4))
    _agree(sp.measure_nonneg("relu", -1.0, 1, 2048, 8, rng), sp.nonneg_theory("relu", -1.0, 1))
    _agree(sp.measure_zeros(0.5, (0.0, 0.0), 2048, 8, rng), sp.zeros_theory(0.5, 0.5, 0.5, 16))
    # decay: the op's last row (q.k = 1) is (lambda^(n-1), ..., lambda, 1) value by value, and its sparsity is
    # the closed form (derived on its own, not the finite sum decay_theory adds up)
    lams, n = np.array([0.5, 0.9]), 100
    ones = np.ones((2, n, 1))
    row = C.last_row_weights("decayed", (ones, ones, ones, np.repeat(np.log(lams)[:, None], n, 1)), scale=1.0)
    np.testing.assert_allclose(row, lams[:, None] ** np.arange(n - 1, -1, -1), rtol=1e-12, atol=0)
    np.testing.assert_allclose(sp.measure_decay(lams, n), [sp.decay_closed(lam, n) for lam in lams], rtol=1e-10)
    # and they can fail: linear rows are not as sparse as softmax at gamma = 2
    assert C.sparsity(w).mean() > sp.softmax_theory(2.0) + 0.5


def test_sparsity_quick_run(tmp_path):
    res = sp.run(out=str(tmp_path), quick=True, progress_bar=False, plots=False)
    assert res["all_agree"], [p for p in res["measured"] if not p["agree"]]
    sw = res["sweep_T"]
    assert sw["decayed"][-1]["S"] < 0.5 * sw["decayed"][0]["S"]            # decay keeps getting sparser
    assert abs(sw["linear"][-1]["S"] - math.sqrt(2 / math.pi)) < 0.02      # identity-linear plateaus
    data = json.load(open(tmp_path / "sparsity.json"))
    assert data["checks"]["relu2"]["(1,1)"] == pytest.approx(0.6128, abs=5e-5)


# ============================================================================ ZeroS claims
def test_best_combination_floors_against_scipy():
    optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    V = rng.standard_normal((6, 6))
    y = V[0] - V[1]
    cone, _ = zc.best_combination(V, y, "cone")
    assert cone == pytest.approx(optimize.nnls(V.T, y)[1], rel=1e-6)
    hull, w = zc.best_combination(V, y, "hull")
    assert w.min() >= 0 and w.sum() == pytest.approx(1)
    cons = ({"type": "eq", "fun": lambda w: w.sum() - 1},)
    ref = optimize.minimize(lambda w: np.sum((V.T @ w - y) ** 2), np.full(6, 1 / 6), bounds=[(0, None)] * 6,
                            constraints=cons, method="SLSQP", options=dict(ftol=1e-14, maxiter=500))
    assert hull == pytest.approx(math.sqrt(ref.fun), rel=1e-5)
    assert hull > cone > 0.1


def test_contrastive_zeros_fits_softmax_and_nonneg_linear_cannot():
    T = 5
    rng = np.random.default_rng(0)
    v = rng.standard_normal((1, T, T))
    y = v[0, 0] - v[0, 1]
    hull = zc.best_combination(v[0], y, "hull")[0] / np.linalg.norm(y)
    cone = zc.best_combination(v[0], y, "cone")[0] / np.linalg.norm(y)
    err = {}
    for m, steps in (("softmax", 250), ("linear elu1, normalised", 250), ("linear relu, unnormalised", 250),
                     ("ZeroS (2 gates)", 1000)):
        _, h = zc.fit(m, v, y, steps, 0.05, np.random.default_rng(1), backend="numpy:explicit")
        err[m] = h.min()
    assert err["softmax"] >= hull - 1e-6 and err["linear elu1, normalised"] >= hull - 1e-6
    assert err["softmax"] < hull + 0.05                       # it does reach the hull (the fit works)
    assert err["linear relu, unnormalised"] >= cone - 1e-6
    assert err["ZeroS (2 gates)"] < 1e-3 and err["ZeroS (2 gates)"] < 0.01 * min(err["softmax"], cone)


def test_dilution_softmax_decays_zeros_does_not(tmp_path):
    res = zd.run(out=str(tmp_path), quick=True, progress_bar=False, plots=False)
    rows = res["per_T"]
    sb = np.array([r["softmax_sbr"] for r in rows])
    assert np.all(np.diff(sb) < 0) and -1.1 < res["softmax_sbr_loglog_slope"] < -0.9
    for lab, g in zd.GATES.items():
        direct = np.array([r[f"{lab}: sbr"] for r in rows])
        ops = np.array([r[f"op {lab}: sbr"] for r in rows])
        np.testing.assert_allclose(ops, direct, rtol=1e-8)                # the ops give the same outputs
        if len(g) == 2:
            np.testing.assert_allclose(direct, 1.0, rtol=1e-9)
        else:
            assert direct[-1] < 0.05 * direct[0]
    np.testing.assert_allclose([r["op softmax_sbr"] for r in rows], sb, rtol=1e-8)
    assert all(r["zero"] == pytest.approx(1 / r["T"]) for r in rows)


def test_cli_experiment(tmp_path):
    from click.testing import CliRunner
    import cli
    r = CliRunner().invoke(cli.main, ["experiment", "zeros-dilution", "--quick", "--quiet", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert os.path.exists(tmp_path / "zeros_dilution.json") and os.path.exists(tmp_path / "zeros_dilution.png")
    assert "sig/bg" in r.output
    r = CliRunner().invoke(cli.main, ["experiment", "sparsity", "--backend", "nosuch"])
    assert r.exit_code != 0 and "nosuch" in r.output
