"""The op table (workbench/opspec.py) and the places that read it instead of repeating its facts."""
import inspect

import numpy as np
import pytest

import workbench as wb
from workbench import ops, opspec, registry, state
from workbench.bench import costs
from workbench.inputs import default_options, random_inputs


@pytest.mark.parametrize("op", opspec.OPS)
def test_public_signature_is_the_table(op):
    sp = opspec.SPECS[op]
    params = inspect.signature(wb.PUBLIC_OPS[op]).parameters
    assert tuple(params)[:len(sp.arrays)] == sp.array_names
    for name, default in sp.options.items():
        assert params[name].default == default, (op, name)
    assert default_options(op) == {k: d for k, d in sp.options.items() if not (k == "causal" and sp.causal_only)}


def test_a_signature_that_disagrees_is_refused_at_import(monkeypatch):
    monkeypatch.setitem(ops._OPTIONS, "linear", dict(ops._OPTIONS["linear"], eps=1e-5))
    with pytest.raises(RuntimeError, match="disagrees with the op table"):
        ops._check_signatures()


def test_states_and_features_agree():
    assert set(state.STATE_OPS) == {op for op, sp in opspec.SPECS.items() if "state" in sp.features}
    assert all(set(sp.features) <= set(registry.FEATURES) for sp in opspec.SPECS.values())


@pytest.mark.parametrize("op", opspec.OPS)
def test_inputs_have_the_declared_dims(op):
    sp = opspec.SPECS[op]
    lead, T, Dk, Dv = (2, 3), 7, 5, 4
    for n_gates in opspec.N_GATES:
        arrays = random_inputs(op, lead, T, Dk, Dv, "float64", n_gates=n_gates)
        size = dict(T=T, Dk=Dk, Dv=Dv, G=n_gates)
        assert [a.shape for a in arrays] == [lead + tuple(size[d] for d in x.dims) for x in sp.arrays]
        els = costs.array_elements(op, costs.Shape(6, T, Dk, Dv, n_gates))
        assert list(els) == list(sp.array_names) and list(els.values()) == [a.size for a in arrays]
        assert all((a <= 0).all() for a, x in zip(arrays, sp.arrays) if x.nonpositive)


def test_causal_only_ops():
    for op, sp in opspec.SPECS.items():
        assert sp.causal_values == ((True,) if sp.causal_only else (True, False))
        validated = opspec.check_options(op, default_options(op), 8)
        assert ("causal" in validated) == (not sp.causal_only), op
    with pytest.raises(ValueError, match="decayed attention is always causal"):
        opspec.check_options("decayed", dict(scale=1.0, causal=False), 8)


def test_unknown_op_names_the_ops():
    with pytest.raises(ValueError, match="unknown op 'nope'; available: softmax, linear, decayed, zeros"):
        opspec.spec("nope")


def test_a_provider_that_fails_to_import_raises_every_time(monkeypatch):
    monkeypatch.setattr(registry, "_LOADED", set())
    monkeypatch.setattr(registry, "_IMPORTED", set(registry._IMPORTED))
    monkeypatch.setattr(registry, "_FAILED", [])
    monkeypatch.setattr(registry, "_PARTIAL_OK", [False])
    monkeypatch.setattr(registry, "_PROVIDERS", registry._PROVIDERS + (("kernels.not_a_provider", None, None),))
    for _ in range(2):
        with pytest.raises(registry.ProviderImportError, match="kernels.not_a_provider failed to import"):
            registry.variants("softmax")
    failures = registry.load_all(allow_failures=True)
    assert [mod for mod, _ in failures] == ["kernels.not_a_provider"]
    assert registry.variants("softmax")              # what did import is served once the failure is accepted
    np.testing.assert_equal(len(registry.OPS), len(opspec.SPECS))


def test_a_renamed_variant_keeps_its_former_name(recwarn):
    """numba:tiled is now numba:flash (one name per algorithm: cupy:flash): the old key still selects it, with
    a FutureWarning, in the API, the registry and the command line; listings show the new name only."""
    import warnings
    from click.testing import CliRunner

    from cli import main
    flash = registry.get("softmax", "numba", "flash")
    with pytest.warns(FutureWarning, match="numba:tiled is now numba:flash"):
        assert registry.get("softmax", "numba", "tiled") is flash
    with pytest.warns(FutureWarning):
        assert registry.canonical_key("numba:tiled") == "numba:flash"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert registry.canonical_key("numba:naive") == "numba:naive"
        assert registry.canonical_key("numpy:tiled") == "numpy:tiled"        # no such former name
    assert "numba:tiled" not in registry.available_keys("softmax")
    with pytest.warns(FutureWarning):
        r = CliRunner().invoke(main, ["check", "--op", "softmax", "--backend", "numba:tiled", "--quick"])
    assert r.exit_code == 0 and "numba:flash" in r.output, r.output


def test_a_lookup_imports_only_its_providers_and_they_declare_what_they_register():
    """registry._PROVIDERS: a Numba lookup of one op imports that op's module alone, not the CuPy kernels nor
    Numba's other ops (a first call's import time); every variant comes from a provider declared for its
    backend and op (register refuses others while the registry imports), so the lazy lookup misses none."""
    import subprocess
    import sys
    code = ("import sys; from workbench import registry; registry.variants('linear', 'numba'); "
            "print(sorted(m for m in sys.modules if m.startswith('kernels.') and not m.split('.')[-1].startswith('_')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['kernels.numba', 'kernels.numba.linear']", out
    registry.load_all()
    for mod, backend, op in registry._PROVIDERS:
        assert mod in registry._IMPORTED
    import pkgutil
    import kernels.numba
    numba_mods = {f"kernels.numba.{m.name}" for m in pkgutil.iter_modules(kernels.numba.__path__)
                  if not m.name.startswith("_") and m.name not in kernels.numba.TOOLS}
    assert numba_mods <= {mod for mod, _, _ in registry._PROVIDERS}, numba_mods     # a new op module is declared
    declared = {(b, o) for _, b, o in registry._PROVIDERS}
    for v in registry.variants():
        assert (v.backend, v.op) in declared or (v.backend, None) in declared, v.key
    with pytest.raises(ValueError, match="registered by provider kernels.numba.linear"):
        registry._LOADING.append(("kernels.numba.linear", "numba", "linear"))
        try:
            registry.register(registry.Variant("softmax", "numba", "stray", None, None))
        finally:
            registry._LOADING.pop()
