"""`check` checks its own reference: finite-difference cells, the reference row, per-variant tolerances."""
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from script_modules import load_script

import cli
from workbench import check, registry, state
from workbench.reference import common, decayed, linear, softmax, zeros

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


derive_tolerances = load_script("derive_tolerances")


# ----------------------------------------------------------------------------- the reference row, fd cells
def test_reference_is_the_reference_row_and_is_checked_by_finite_differences(tmp_path):
    path = tmp_path / "check.json"
    res = CliRunner().invoke(cli.main, ["check", "--backend", "numpy", "--quick", "--json", str(path)])
    assert res.exit_code == 0, res.output
    data = json.loads(path.read_text())
    assert data["reference"] == "numpy:explicit"
    cells = data["cells"]
    compared = [c for c in cells if c["kind"] == "compare"]
    fd = [c for c in cells if c["kind"] == "fd"]
    assert compared and all(c["variant"] != "numpy:explicit" for c in compared)     # never against itself
    assert {c["variant"] for c in fd} == {"numpy:explicit"} and all(c["dtype"] == "float64" for c in fd)
    for op in registry.OPS:
        plain = [c for c in fd if c["op"] == op and "+" not in c["options"]]
        opts = {c["options"] for c in plain}
        # every option of the op, --quick or not
        assert len(opts) == len(check.option_grid(op, quick=False)), (op, opts)
        names = {"d" + n for n in registry.ARRAY_ARGS[op]}
        for c in plain:
            assert set(c["errors"]) == names and all(0 < e < 1e-8 for e in c["errors"].values()), c
            assert c["tol"] == check.FD_TOLERANCE and c["ok"]
        # the state and packing options of the reference (workbench/state.py): the initial state's gradient too
        featured = [c for c in fd if c["op"] == op and "+" in c["options"]]
        assert {c["options"].split()[-1] for c in featured} == (
            {"+packed"} if op == "softmax" else {"+state", "+packed", "+state+packed"})
        for c in featured:
            want = names | ({f"dinit.{f}" for f in state.layout(op, 3, 4, "norm" in c["options"])}
                            if "+state" in c["options"] else set())
            assert set(c["errors"]) == want and all(0 < e < 1e-8 for e in c["errors"].values()), c
            assert c["ok"]
    # one reference row per op in the table, with no result of its own
    rows = [line.split() for line in res.stdout.splitlines()]
    ref_rows = [r for r in rows if r[1:2] == ["numpy:explicit"] and r[-1] == "reference"]
    assert sorted(r[0] for r in ref_rows) == sorted(registry.OPS)
    n_fd, n_cmp = len(fd), len(compared)
    assert f"{n_fd + n_cmp} passed, 0 failed ({n_fd + n_cmp} cells: {n_cmp} against the reference" in res.output


def _negated(fn):
    return lambda *a, **kw: -fn(*a, **kw)


_dnum_dden = linear._dnum_dden


def _dden_flipped(do, num, den):
    dnum, dden = _dnum_dden(do, num, den)
    return dnum, (None if dden is None else -dden)


# A sign flip in each gradient helper the explicit reference uses: (module, name, replacement, op).
FLIPS = [
    (zeros, "_gate_grads", _negated(zeros._gate_grads), "zeros"),
    (decayed, "_dlog_decay", _negated(decayed._dlog_decay), "decayed"),
    (linear, "_dnum_dden", _dden_flipped, "linear"),
    (linear, "feature_map_grad", _negated(common.feature_map_grad), "linear"),
]


@pytest.mark.parametrize("module,name,flipped,op", FLIPS, ids=[f"{m.__name__.split('.')[-1]}.{n}"
                                                               for m, n, _, _ in FLIPS])
def test_a_sign_flip_in_a_shared_gradient_helper_fails_the_cpu_check(monkeypatch, module, name, flipped, op):
    """The finite-difference cells run on every `check` (--quick too), so a flipped helper fails at least one
    CPU cell even where both NumPy references share it."""
    monkeypatch.setattr(module, name, flipped)
    assert not check.run_check(ops=(op,), backends=("numpy",), quick=True, echo=lambda *_: None)
    cells, _ = check.plan(ops=(op,), backends_=("numpy",), quick=True)
    fd = [check.run_cell(*c, seed=0) for c in cells if c[-1] == "fd"]
    assert fd and any(not c.ok for c in fd)


def _shifted(fn):
    return lambda x, name: fn(x, name) + 0.25


@pytest.mark.parametrize("name,shifted", [("_phi", _shifted(common.feature_map)),
                                          ("feature_map_by_parts", _shifted(common.feature_map_by_parts))],
                         ids=["explicit", "chunked"])
def test_a_wrong_feature_map_in_either_linear_reference_fails_the_cpu_check(monkeypatch, name, shifted):
    """A constant added to phi keeps phi' right, so the finite-difference cells pass; the two linear references
    write phi each their own way, so the comparison cells fail whichever of them is wrong."""
    monkeypatch.setattr(linear, name, shifted)
    monkeypatch.setattr(check, "_REF_CACHE", {})          # the reference computed with this phi
    cells, _ = check.plan(ops=("linear",), backends_=("numpy",), quick=True)
    done = [check.run_cell(*c, seed=0) for c in cells]
    assert all(c.ok for c in done if c.kind == "fd")
    assert any(not c.ok for c in done if c.kind == "compare")


def test_finite_differences_of_a_correct_reference_are_tight():
    """The fd cells' own error is far below their tolerance (so the tolerance has room and still bites)."""
    for op in registry.OPS:
        res = check.finite_differences(op, seed=3)
        errs = [v for k, v in res.items() if k.startswith("d")]
        assert res["ok"] and max(errs) < check.FD_TOLERANCE / 100, (op, res)


# ----------------------------------------------------------------------------- tolerances
@pytest.fixture
def tight_variant():
    """numpy:chunked softmax under another name, declaring a float32 tolerance below its float32 error."""
    v = registry.register(registry.Variant("softmax", "numpy", "tight", softmax.tiled_forward, softmax.tiled_backward,
                                           dtypes=("float32", "float64"), tol={"float32": 1e-9}))
    yield v
    registry.unregister("softmax", "numpy", "tight")


def test_check_applies_and_prints_the_variant_tolerance(tight_variant, tmp_path):
    assert tight_variant.tolerance("float32") == 1e-9 and tight_variant.tolerance("float64") == 1e-10
    cell = check.compare("softmax", "numpy:tight", (2,), 9, 4, dtype="float32")
    assert cell["tol"] == 1e-9 and not cell["ok"] and 1e-9 < cell["out"] < 1e-4
    assert check.compare("softmax", "numpy:chunked", (2,), 9, 4, dtype="float32")["ok"]    # same error passes
    path = tmp_path / "c.json"
    res = CliRunner().invoke(cli.main, ["check", "--backend", "numpy:tight", "--quick", "--json", str(path)])
    assert res.exit_code == 1
    tight_rows = [line.split() for line in res.stdout.splitlines() if "numpy:tight" in line]
    assert {r[3] for r in tight_rows} == {"float32", "float64"}
    assert all(("1e-09" in r and r[-1] == "FAIL") if r[3] == "float32" else ("1e-10" in r and r[-1] == "ok")
               for r in tight_rows), tight_rows
    cells = [c for c in json.loads(path.read_text())["cells"] if c["variant"] == "numpy:tight"]
    assert {(c["dtype"], c["tol"]) for c in cells} == {("float32", 1e-9), ("float64", 1e-10)}


def test_registered_tolerances_are_capped_by_the_dtype_tolerance():
    f = softmax.tiled_forward
    with pytest.raises(ValueError, match=r"tol\['float32'\] = 0.001.*0 < tol <= 0.0001"):
        registry.register(registry.Variant("softmax", "numpy", "loose", f, f, tol={"float32": 1e-3}))
    with pytest.raises(ValueError, match=r"tol\['float16'\].*a dtype of the variant \(float32, float64\)"):
        registry.register(registry.Variant("softmax", "numpy", "loose", f, f, tol={"float16": 1e-3}))
    assert ("softmax", "numpy", "loose") not in registry._TABLE
    for v in registry.variants():
        for dtype in v.dtypes:
            assert 0 < v.tolerance(dtype) <= v.ceiling(dtype) <= max(registry.TOLERANCE[dtype], registry.TOLERANCE["tf32"] if "tf32" in v.tags else 0)


def test_round_up_and_derive_tolerance():
    r = derive_tolerances.round_up_125
    assert [r(x) for x in (1e-4, 1.01e-4, 1.9e-4, 2e-4, 2.04e-4, 4.9e-4, 5e-4, 5.1e-4, 9.9e-4, 3.62e-4 * 4)] == \
        [1e-4, 2e-4, 2e-4, 2e-4, 5e-4, 5e-4, 5e-4, 1e-3, 1e-3, 2e-3]
    assert derive_tolerances.derive_tolerance(3.62e-4, "float16") == 2e-3           # 4x, rounded up
    assert derive_tolerances.derive_tolerance(5.1e-5, "float32") == 1e-4            # capped by the dtype
    assert derive_tolerances.derive_tolerance(0.0, "float64") == 1e-10              # nothing measured


def _cell(op, variant, dtype, errors, ok=True, kind="compare"):
    return dict(op=op, variant=variant, shape="2x8x4", dtype=dtype, causal=True, options="", kind=kind,
                errors=errors, tol=1e-4, ok=ok, error="", seconds=0.0)


def test_derive_takes_the_worst_error_of_every_output_and_gradient(tmp_path):
    cells = [_cell("softmax", "cupy:x", "float16", {"out": 1e-4, "dq": 3e-4, "dk": 2e-4}),
             _cell("softmax", "cupy:x", "float16", {"out": 2e-4, "dq": 1e-4, "dv": float("nan")}, ok=False),
             _cell("softmax", "cupy:x", "float32", {"out": 1e-7, "dq": 2.6e-7}),
             _cell("softmax", "numpy:explicit", "float64", {"dq": 1e-3}, kind="fd"),     # not a measurement
             _cell("softmax", "numpy:explicit", "float64", {"out": 0.0})]                 # the reference itself
    path = tmp_path / "c.json"
    path.write_text(json.dumps(dict(reference="numpy:explicit", cells=cells)))
    rows = {(d.variant, d.dtype): d for d in derive_tolerances.derive([str(path)])}
    assert set(rows) == {("cupy:x", "float16"), ("cupy:x", "float32")}
    assert rows["cupy:x", "float16"].worst == 3e-4 and rows["cupy:x", "float16"].tol == 2e-3
    assert rows["cupy:x", "float16"].cells == 2 and rows["cupy:x", "float16"].failed == 1
    assert rows["cupy:x", "float32"].tol == 2e-6
    empty = tmp_path / "e.json"
    empty.write_text(json.dumps(dict(cells=[_cell("softmax", "numpy:explicit", "float64", {"dq": 0.0}, kind="fd")])))
    assert derive_tolerances.main([str(empty)]) == 1


def test_registered_tolerances_are_the_ones_derived_from_the_committed_gpu_sweep(capsys):
    """Every variant with GPU data declares 4x its worst error seen (rounded up, capped); the committed sweep
    passes under them; cupy:flash_mma float16 is held to <= 2e-3."""
    derived = derive_tolerances.derive(derive_tolerances.default_sources())
    assert len(derived) >= 50
    assert ("softmax", "cupy:fa2", "float16") in {(d.op, d.variant, d.dtype) for d in derived}   # the H200 sweeps
    for d in derived:
        backend, name = d.variant.split(":")
        v = registry.get(d.op, backend, name)
        assert v.tolerance(d.dtype) == d.tol == v.tol[d.dtype], d
        assert d.worst <= d.tol and d.failed == 0
    assert registry.get("softmax", "cupy", "flash_mma").tolerance("float16") <= 2e-3
    assert derive_tolerances.main([]) == 0
    out = capsys.readouterr().out
    assert "differs" not in out and "cupy:flash_mma" in out and "tol={'bfloat16': 0.02, 'float16': 0.002}" in out
