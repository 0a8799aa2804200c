"""The `check` sweep and the CLI: it passes on the references, and a planted wrong variant fails it."""
import dataclasses
import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from workbench import check, registry
from workbench.reference import softmax


def test_cli_info_lists_backends_and_variants():
    res = CliRunner().invoke(cli.main, ["info"])
    assert res.exit_code == 0, res.output
    for word in ("numpy", "numba", "cupy", "numpy:chunked", "zeros"):
        assert word in res.output


def test_cli_check_quick_passes_and_writes_json(tmp_path):
    path = tmp_path / "check.json"
    res = CliRunner().invoke(cli.main, ["check", "--backend", "numpy", "--quick", "--json", str(path)])
    assert res.exit_code == 0, res.output
    data = json.loads(path.read_text())
    cells = data["cells"]
    assert {c["op"] for c in cells} == set(registry.OPS)
    assert all(c["ok"] for c in cells)
    assert any(c["dtype"] == "float32" for c in cells) and any(c["dtype"] == "float64" for c in cells)
    assert "passed, 0 failed" in res.output


def test_cli_check_bad_arguments_are_usage_errors():
    res = CliRunner().invoke(cli.main, ["check", "--backend", "tpu"])
    assert res.exit_code == 2 and "unknown backend or variant 'tpu'" in res.output
    res = CliRunner().invoke(cli.main, ["check", "--op", "cosine"])
    assert res.exit_code == 2 and "unknown op 'cosine'" in res.output


@pytest.fixture
def broken_variant():
    """A softmax variant that forgets the causal mask in its forward and drops a factor in dk."""
    def fwd(q, k, v, causal=True, scale=1.0):
        return softmax.explicit_forward(q, k, v, causal=False, scale=scale)

    def bwd(ctx, do):
        dq, dk, dv = softmax.explicit_backward(ctx, do)
        return dq, 0.5 * dk, dv
    v = registry.register(registry.Variant("softmax", "numpy", "broken", fwd, bwd))
    yield v
    registry.unregister("softmax", "numpy", "broken")


def test_check_catches_a_wrong_variant(broken_variant):
    res = CliRunner().invoke(cli.main, ["check", "--backend", "numpy:broken", "--quick"])
    assert res.exit_code == 1
    assert "FAIL" in res.output
    # non-causal cells of its forward are right, but its dk is wrong everywhere
    cell = check.compare("softmax", "numpy:broken", (2,), 9, 4, causal=False)
    assert cell["out"] < 1e-6 and cell["dk"] > 0.1 and not cell["ok"]


def test_check_without_a_terminal_reports_progress_and_failures_as_they_come(broken_variant):
    # in a log file (no terminal, so no bar) each failed cell is printed at once and every step prints the
    # running count, so a sweep cut short by a time limit still says how far it got
    res = CliRunner().invoke(cli.main, ["check", "--backend", "numpy:broken", "--quick"])
    assert res.exit_code == 1
    err = res.stderr
    assert "check: FAIL softmax numpy:broken" in err
    counts = [line.split()[1] for line in err.splitlines() if line.startswith("check: ") and "cells," in line]
    done = [int(c.split("/")[0]) for c in counts]
    assert done == sorted(done) and len(done) > 1 and counts[-1] == f"{done[-1]}/{done[-1]}"
    last = [line for line in err.splitlines() if "cells," in line][-1]
    assert not last.endswith(" 0 failed")


def test_check_reports_a_crashing_variant_as_a_failed_cell():
    def fwd(q, k, v, causal=True, scale=1.0):
        raise RuntimeError("kernel exploded")
    registry.register(registry.Variant("softmax", "numpy", "crash", fwd, fwd))
    try:
        cell = check.run_cell(registry.get("softmax", "numpy", "crash"), check.Shape((1,), 4, 2, 2), "float32",
                              True, "", {}, seed=0)
        assert not cell.ok and "kernel exploded" in cell.error
    finally:
        registry.unregister("softmax", "numpy", "crash")


def test_rel_error_handles_nan_and_zero_reference():
    assert np.isnan(check.rel_error(np.array([np.nan, 1.0]), np.array([1.0, 1.0])))
    assert check.rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert check.rel_error(np.array([1.0, 2.0]), np.array([1.0, 1.0])) == pytest.approx(1 / np.sqrt(2))


def test_parallel_check_gives_the_same_cells_in_the_same_order(tmp_path):
    """--jobs N runs cell groups in spawned processes; the result table must not depend on it."""
    serial, parallel = tmp_path / "serial.json", tmp_path / "parallel.json"
    assert check.run_check(ops=("zeros",), backends=("numpy",), quick=True, json_path=str(serial), echo=lambda *_: None)
    assert check.run_check(ops=("zeros",), backends=("numpy",), quick=True, json_path=str(parallel),
                           echo=lambda *_: None, jobs=2)
    a, b = (json.loads(p.read_text())["cells"] for p in (serial, parallel))
    assert len(a) == len(b) > 4
    strip = lambda c: {k: v for k, v in c.items() if k != "seconds"}      # noqa: E731
    assert [strip(c) for c in a] == [strip(c) for c in b]


def test_plan_leaves_out_the_cells_a_variant_refuses(monkeypatch):
    """The GPU sweep plans no cell the op would refuse for that variant (the tf32 linear variant with normalize,
    the tensor-core one at head dim 128 with normalize: Dv + 1 columns), and says how many it left out and why."""
    import kernels.cupy  # noqa: F401  (registers the cupy variants)
    from workbench import backends as be
    monkeypatch.setattr(be, "status", lambda b: (True, "pretend"))
    cells, notes = check.plan(ops=("linear",), backends_=("cupy:chunked_mma_tf32", "cupy:chunked_mma"))
    tf32 = [c for c in cells if c[0].key == "cupy:chunked_mma_tf32"]
    mma = [c for c in cells if c[0].key == "cupy:chunked_mma"]
    assert tf32 and not any(c[5].get("normalize") for c in tf32)
    assert any(c[5].get("normalize") for c in mma)
    assert not any(c[5].get("normalize") and c[1].Dv + 1 > 128 for c in mma)
    assert any(c[1].Dv == 128 for c in mma)                       # without normalize it is checked there
    assert any("not checked" in n and "normalize=True needs cupy:chunked_mma" in n for n in notes), notes


@pytest.fixture
def exact_bfloat16_variant():
    """A zeros variant for bfloat16 inputs that computes exactly (the float64 reference on the inputs it gets)."""
    from workbench.opspec import SPECS
    from workbench.reference import zeros

    def fwd(*args, **kw):
        return zeros.explicit_forward(*(np.asarray(a, np.float64) for a in args), **kw)

    def bwd(ctx, do, *dfinal):
        return zeros.explicit_backward(ctx, np.asarray(do, np.float64), *dfinal)
    v = registry.register(registry.Variant("zeros", "numpy", "exact_bf16", fwd, bwd, dtypes=("bfloat16",),
                                           features=frozenset(SPECS["zeros"].features)))
    yield v
    registry.unregister("zeros", "numpy", "exact_bf16")


def test_bfloat16_cells_compare_with_the_reference_on_the_rounded_inputs(exact_bfloat16_variant):
    """Cell inputs are float16-exact; bfloat16 rounds them further.  The reference runs on the inputs as the
    variant gets them: an exact variant shows no error, even in ZeroS's final P = P0 + sum s (T = 130: the sum
    cancels, and on the unrounded inputs it is off by about 0.1)."""
    pytest.importorskip("ml_dtypes")
    cell = check.compare("zeros", "numpy:exact_bf16", (2,), 130, 64, 64, "bfloat16", causal=True, state=True)
    errors = {k: e for k, e in cell.items() if isinstance(e, float) and k not in ("tol", "seconds")}
    assert "final.P" in errors and max(errors.values()) < 1e-9, errors
    cin = check.cell_inputs("zeros", (2,), 130, 64, 64, causal=True, state=True)
    assert check._as_seen(cin, check._caster("float16"), "float16") is cin
    seen = check._as_seen(cin, check._caster("bfloat16"), "bfloat16")
    assert seen.key != cin.key and not np.array_equal(seen.arrays[3], cin.arrays[3])


@pytest.fixture
def skewed_bfloat16_variant():
    """A zeros variant for bfloat16 inputs: the exact result with one output scaled by (1 + ``skew[name]``)."""
    from workbench.opspec import SPECS
    from workbench.reference import zeros
    skew = {}

    def fwd(*args, **kw):
        return zeros.explicit_forward(*(np.asarray(a, np.float64) for a in args), **kw)

    def bwd(ctx, do, *dfinal):
        grads = list(zeros.explicit_backward(ctx, np.asarray(do, np.float64), *dfinal))
        if "dq" in skew:
            grads[0] = grads[0] * (1 + skew["dq"])
        if "dinit.m" in skew:
            grads[-1] = dataclasses.replace(grads[-1], m=grads[-1].m * (1 + skew["dinit.m"]))
        return tuple(grads)
    registry.register(registry.Variant("zeros", "numpy", "skewed_bf16", fwd, bwd, dtypes=("bfloat16",),
                                       features=frozenset(SPECS["zeros"].features)))
    yield skew
    registry.unregister("zeros", "numpy", "skewed_bf16")


def _skewed_cell(skew, **errors):
    skew.clear()
    skew.update(errors)
    return check.compare("zeros", "numpy:skewed_bf16", (2,), 127, 80, 80, "bfloat16", causal=True, state=True)


def test_ill_conditioned_outputs_are_judged_against_their_rounding_floor(skewed_bfloat16_variant):
    """At this cell the float64 reference's d init.m moves about 3% under bfloat16 input rounding (its rounding
    floor, above the 2e-2 tolerance): an error of 5% there passes, and says so; 50% fails.  A 10% error in dq
    (floor about 0.5%) fails, and an exact result computes no floor at all."""
    pytest.importorskip("ml_dtypes")
    skew = skewed_bfloat16_variant
    exact = _skewed_cell(skew)
    assert exact["ok"] and exact["floors"] == {}
    near = _skewed_cell(skew, **{"dinit.m": 0.05})
    tol, floor = near["tol"], near["floors"]["dinit.m"]
    assert near["dinit.m"] > tol and tol < floor < near["dinit.m"] <= check.FLOOR_FACTOR * floor
    assert near["ok"] and set(near["floors"]) == {"dinit.m"}
    assert not _skewed_cell(skew, **{"dinit.m": 0.5})["ok"]
    bad_dq = _skewed_cell(skew, dq=0.1)
    assert not bad_dq["ok"] and bad_dq["floors"]["dq"] < 0.01


def test_rounding_floor_only_for_16_bit_dtypes():
    cin = check.cell_inputs("linear", (2,), 9, 4)
    assert check.rounding_floors("linear", cin, "float32", ["dq"]) == {}
    assert 0 < check.rounding_floors("linear", cin, "float16", ["dq"])["dq"] < 1e-2


@pytest.mark.parametrize("jobs", [1, 2])
def test_a_sweep_cut_short_by_its_time_limit_fails_and_keeps_what_ran(tmp_path, jobs):
    """--time-limit: the cells that ran are written, the rest counted as not run, and the sweep is not a pass;
    with jobs > 1 the workers still running are stopped rather than waited for."""
    path = tmp_path / "cut.json"
    lines = []
    t0 = time.monotonic()
    ok = check.run_check(ops=("zeros",), backends=("numpy",), quick=True, json_path=str(path), echo=lines.append,
                         jobs=jobs, time_limit=1e-6)
    assert not ok
    data = json.loads(path.read_text())
    assert data["not_run"] > 0 and data["planned"] == data["not_run"] + len(data["cells"])
    assert any(f"NOT RUN: {data['not_run']} of {data['planned']} cells" in str(x) for x in lines)
    whole = tmp_path / "whole.json"
    assert check.run_check(ops=("zeros",), backends=("numpy",), quick=True, json_path=str(whole),
                           echo=lambda *_: None, time_limit=600)
    full = json.loads(whole.read_text())
    assert full["not_run"] == 0 and full["planned"] == len(full["cells"]) == data["planned"]
    assert time.monotonic() - t0 < 120


def test_skip_passed_runs_only_what_did_not_pass_before(tmp_path):
    """--skip-passed: the cells that passed in an earlier JSON (same seed) are not run again -- the cells missing
    from it (a sweep cut by its time limit) and the ones that failed there are; the sweep passes when every
    planned cell passed here or there, and the JSON counts the skipped ones."""
    first = tmp_path / "first.json"
    assert check.run_check(ops=("linear",), backends=("numpy",), quick=True, json_path=str(first),
                           echo=lambda *_: None)
    data = json.loads(first.read_text())
    planned = data["planned"]
    assert planned == len(data["cells"]) > 4 and data["seed"] == 0
    # as a cut sweep would leave it: the last two cells missing, one failed
    data["cells"] = data["cells"][:-2]
    data["cells"][0]["ok"] = False
    rerun_ids = {check.json_cell_identity(c) for c in json.loads(first.read_text())["cells"]}
    cut = tmp_path / "cut.json"
    cut.write_text(json.dumps(data))
    lines, second = [], tmp_path / "second.json"
    assert check.run_check(ops=("linear",), backends=("numpy",), quick=True, json_path=str(second),
                           echo=lambda *a: lines.append(" ".join(map(str, a))), skip_passed=(str(cut),))
    out = json.loads(second.read_text())
    assert out["planned"] == planned and out["skipped"] == planned - 3 and out["not_run"] == 0
    assert out["skipped_from"] == [str(cut)]
    ran = {check.json_cell_identity(c) for c in out["cells"]}
    assert len(ran) == 3 and check.json_cell_identity(data["cells"][0]) in ran and ran <= rerun_ids
    assert any(f"skipped {planned - 3} of {planned} planned cells" in x for x in lines)
    # everything passed before: nothing runs, and that is a pass that says so
    lines.clear()
    assert check.run_check(ops=("linear",), backends=("numpy",), quick=True, echo=lines.append,
                           skip_passed=(str(first),))
    assert any("nothing left to run" in x for x in lines)


def test_skip_passed_refuses_another_seed_or_a_file_that_is_not_a_check_json(tmp_path):
    path = tmp_path / "s1.json"
    assert check.run_check(ops=("softmax",), backends=("numpy:explicit",), quick=True, json_path=str(path),
                           seed=1, echo=lambda *_: None) in (True, False)
    with pytest.raises(ValueError, match=r"--seed 1.*--seed 0"):
        check.run_check(ops=("softmax",), backends=("numpy",), quick=True, echo=lambda *_: None,
                        skip_passed=(str(path),))
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="not a check JSON"):
        check.run_check(ops=("softmax",), backends=("numpy",), quick=True, echo=lambda *_: None,
                        skip_passed=(str(other),))


def test_cli_check_skip_passed(tmp_path):
    from click.testing import CliRunner
    import cli
    path = tmp_path / "c.json"
    r = CliRunner().invoke(cli.main, ["check", "--op", "decayed", "--backend", "numpy", "--quick", "--json", str(path)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli.main, ["check", "--op", "decayed", "--backend", "numpy", "--quick",
                                      "--skip-passed", str(path)])
    assert r.exit_code == 0 and "nothing left to run" in r.output, r.output
    r = CliRunner().invoke(cli.main, ["check", "--op", "decayed", "--backend", "numpy", "--quick",
                                      "--skip-passed", str(tmp_path / "missing.json")])
    assert r.exit_code == 2 and "missing.json" in r.output
    r = CliRunner().invoke(cli.main, ["check", "--op", "decayed", "--backend", "numpy", "--quick", "--seed", "3",
                                      "--skip-passed", str(path)])
    assert r.exit_code == 2 and "--seed 0" in r.output, r.output
