"""The decode-throughput and packed-vs-padded benchmarks (workbench/bench/decode.py, packed.py; grids in
workbench/bench/grid.py) on the NumPy backend with tiny settings, their cost model, tables and CLI; a GPU
run of both on small settings (marked gpu)."""
import json
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from workbench.bench import ceilings, costs, grid as G, harness, report

FAKE_CEIL = {"device": "test host", "bw": 10e9, "flops": {"float32": 100e9, "float64": 50e9}}
DECODE = replace(G.GRIDS["cpu-decode"], batches=(1, 3), Ds=(8,), target_ms=2.0)
PACKED = replace(G.GRIDS["cpu-packed"], mixes={"awkward": (1, 63, 64, 65, 7)}, Ds=(4,), target_ms=2.0)


@pytest.fixture(autouse=True)
def _ceiling_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ceilings, "measure_host", lambda echo=None: dict(FAKE_CEIL, method={}, errors={}))


def test_step_cost_model():
    """64 heads of 64 x 64 float32 states: 1 MiB read (and written) per step; ZeroS three matrices and four
    scalars per head; the token's arrays in the input dtype."""
    assert costs.step_state_bytes("decayed", 64, 64, 64, "float16") == 64 * 64 * 64 * 4
    assert costs.step_state_bytes("linear", 1, 8, 4, "float32", normalize=True) == (32 + 8) * 4
    assert costs.step_state_bytes("zeros", 2, 8, 4, "float64") == 2 * (3 * 32 + 4) * 8
    assert costs.step_bytes("decayed", 2, 8, 4, "float16") == 2 * 2 * 32 * 4 + 2 * (8 + 8 + 4 + 1 + 4) * 2
    assert costs.step_flops("zeros", 2, 8, 4) == 2 * 3 * 4 * 32


def test_decode_grid_end_to_end(tmp_path):
    res = harness.run_grid(DECODE, dict(FAKE_CEIL), echo=None)
    rows = res["results"]
    assert res["meta"]["complete"] and res["meta"]["grid"]["kind"] == "decode"
    assert res["meta"]["lines"] == {op: ["step:array"] for op in G.STEP_OPS}
    assert len(rows) == 3 * 2 and all(r["status"] == "ok" for r in rows), rows
    for r in rows:
        assert r["table"] == "decode" and r["pass"] == "step" and r["T"] == 1 and r["N"] == r["B"] * r["H"]
        assert r["tokens_per_s"] == pytest.approx(r["B"] / (r["ms_median"] * 1e-3))
        read = costs.step_state_bytes(r["op"], r["N"], 8, 8, "float32")
        assert r["read_bound_ms"] == pytest.approx(read / FAKE_CEIL["bw"] * 1e3)
        assert r["read_bound_x"] == pytest.approx(r["ms_median"] / r["read_bound_ms"])
        assert r["bytes"] == costs.step_bytes(r["op"], r["N"], 8, 8, "float32", False, DECODE.n_gates)
        assert r["rel_err"] == 0.0 and 0 < r["roof_frac"]
    table = report.decode_table(res)
    assert table.count("step:array") == 6 and "x read bound" in table
    assert "Decode throughput" in report.markdown(res) and "Every measurement" in report.markdown(res)
    assert "step:array" not in report.full_table(res) and "step:array" not in report.short_table(res)
    report.write_csv(res, str(tmp_path / "d.csv"))
    head = (tmp_path / "d.csv").read_text().splitlines()[0].split(",")
    assert {"tokens_per_s", "read_bound_x", "table", "B"} <= set(head)


def test_decode_api_line_and_kernel_path_on_the_host():
    """The api:step line is timed against the array line it runs (overhead = API - step time); the kernel path
    is a skip on NumPy arrays, with the reason."""
    g = replace(DECODE, ops=("decayed",), batches=(2,), paths=("kernel", "array"), api="default", api_reps=5,
                api_budget_ms=5.0)
    rows = {r["line"]: r for r in harness.run_grid(g, dict(FAKE_CEIL), echo=None)["results"]}
    assert rows["step:kernel"]["status"] == "skip" and "needs the CuPy step kernel" in rows["step:kernel"]["note"]
    api = rows["api:step"]
    assert api["status"] == "ok" and api["kind"] == "api" and api["api_of"] == "step:array"
    assert api["overhead_ms"] == pytest.approx(api["ms_median"] - rows["step:array"]["ms_median"])


def test_packed_grid_end_to_end():
    """Every packed-feature NumPy variant x layout x pass measured; the packed rows carry the ratios and
    agree with the padded call (float32 references)."""
    res = harness.run_grid(PACKED, dict(FAKE_CEIL), echo=None)
    rows = res["results"]
    assert all(r["status"] == "ok" for r in rows), [r["note"] for r in rows if r["status"] != "ok"]
    assert len(rows) == 4 * 2 * 3 * 2                  # ops x variants x layouts x passes
    for r in rows:
        assert r["table"] == "packed" and r["lengths"] == "1,63,64,65,7"
        assert (r["T"], r["N"]) == {"packed": (200, 1), "single": (200, 1), "padded": (65, 5)}[r["layout"]]
        if r["layout"] == "packed":
            assert r["rel_err"] < 1e-5
            assert r["vs_single"] > 0 and r["vs_padded"] > 0
        else:
            assert "vs_single" not in r
    table = report.packed_table(res)
    assert table.count("numpy:chunked") == 4 * 2 and "packed / single" in table


def test_packed_outputs_are_compared_against_padding(monkeypatch):
    """rel_err is a real comparison: a packed call that ignores its offsets (attends across sequences)
    differs from the padded call."""
    from workbench.bench import lines
    real = lines.prepare_variant

    def drop_offsets(variant, arrays, dout, options):
        return real(variant, arrays, dout, {k: v for k, v in options.items() if k != "cu_seqlens"})
    monkeypatch.setattr(lines, "prepare_variant", drop_offsets)
    rows = harness.run_grid(replace(PACKED, ops=("linear",), passes=("fwd",)), dict(FAKE_CEIL), echo=None)["results"]
    assert all(r["rel_err"] > 1e-2 for r in rows if r["layout"] == "packed")


def test_grid_filters_and_cli(tmp_path):
    with pytest.raises(ValueError, match="grid cpu-decode .decode. has no T axis"):
        DECODE.filtered(Ts=(4,))
    with pytest.raises(ValueError, match="has no backend filter"):
        DECODE.filtered(backends=("numpy",))
    with pytest.raises(ValueError, match="has no op 'softmax'"):
        DECODE.filtered(ops=("softmax",))
    assert DECODE.filtered(ops=("zeros",), dtypes=("float64",)).cells() == [
        G.DecodeCell("zeros", 1, 8, "float64"), G.DecodeCell("zeros", 3, 8, "float64")]
    assert PACKED.filtered(backends=("numpy:chunked",), passes=("fwd",)).passes == ("fwd",)
    from cli import main
    out = tmp_path / "d.json"
    r = CliRunner().invoke(main, ["bench", "--grid", "cpu-decode", "--op", "decayed", "--D", "4", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "decode throughput" in r.output and json.loads(out.read_text())["meta"]["grid"]["name"] == "cpu-decode"
    r = CliRunner().invoke(main, ["bench", "--grid", "cpu-decode", "--T", "4"])
    assert r.exit_code == 2 and "has no T axis" in r.output


@pytest.mark.gpu
def test_decode_and_packed_grids_on_the_gpu():
    """Small GPU runs: every step kernel line measured (float16, bfloat16, float32) and equal to the array form;
    the packed tensor-core lines measured with the packed output equal to the padded one."""
    ceil = ceilings.get_ceilings(gpu=True, echo=None)
    dec = replace(G.GRIDS["decode"], batches=(1, 64), target_ms=5.0, api_budget_ms=10.0)
    rows = harness.run_grid(dec, ceil, echo=None)["results"]
    assert all(r["status"] == "ok" for r in rows), [(r["line"], r["note"]) for r in rows if r["status"] != "ok"]
    kern = [r for r in rows if r["line"] == "step:kernel"]
    assert len(kern) == 3 * 3 * 2
    tol = {"float32": 1e-5, "float16": 2e-3, "bfloat16": 1e-2}
    assert all(r["rel_err"] == 0.0 for r in kern)                       # the first line: the reference
    floors = {(r["op"], r["B"], r["dtype"]): r["ms_median"] for r in rows if r["line"] == "floor"}
    assert len(floors) == len(kern)                                     # one empty-kernel floor per cell
    for r in kern:                                                      # the step's own work, floor taken off
        f = floors[(r["op"], r["B"], r["dtype"])]
        assert r["above_floor_x"] == pytest.approx(max(r["ms_median"] - f, 0.0) / r["read_bound_ms"])
    for r in rows:
        if r["line"] == "step:array":
            assert r["rel_err"] < tol[r["dtype"]], r
    pk = replace(G.GRIDS["packed"], mixes={"awkward": (1, 63, 64, 65, 700)}, ops=("linear", "decayed"), target_ms=5.0)
    rows = harness.run_grid(pk, ceil, echo=None)["results"]
    # a variant that does not take the dtype (the tf32 one in float16) is a skip row; nothing may fail
    assert rows and all(r["status"] in ("ok", "skip") for r in rows), \
        [(r["line"], r["note"]) for r in rows if r["status"] not in ("ok", "skip")]
    assert all("not supported" in r["note"] for r in rows if r["status"] == "skip")
    assert {r["dtype"] for r in rows if r["status"] == "ok"} == set(pk.dtypes)
    for r in rows:
        if r["layout"] == "packed" and r["status"] == "ok":
            assert r["rel_err"] < 2e-3 and r["vs_single"] > 0, r
