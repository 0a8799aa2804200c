"""API lines of the bench on the NumPy backend: the public op and vjp + pullback wall-clocked next to the variant
they run, the overhead table, the CLI; the bench times the user's path (no output poisoning)."""
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from workbench import backends, registry
from workbench.bench import ceilings, grid as G, harness, lines, report
from workbench.registry import Variant

FAKE_CEIL = {"device": "test host", "bw": 10e9, "flops": {"float32": 100e9, "float64": 50e9}}
TINY = replace(G.GRIDS["cpu-api"], Ts=(1, 16), Ds=(4,), target_ms=2.0, api_reps=40, api_budget_ms=20.0)


@pytest.fixture(autouse=True)
def _ceiling_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ceilings, "measure_host", lambda echo=None: dict(FAKE_CEIL, method={}, errors={}))


def test_api_lines_next_to_every_variant():
    res = harness.run_grid(TINY, dict(FAKE_CEIL), echo=None)
    rows = res["results"]
    assert all(r["status"] == "ok" for r in rows), [r["note"] for r in rows if r["status"] != "ok"]
    api = [r for r in rows if r["kind"] == "api"]
    ours = [r for r in rows if r["kind"] == "ours"]
    assert len(api) == len(ours) == 4 * 2 * 2 * 3          # ops x T x NumPy variants x passes
    own = {(r["op"], r["T"], r["line"], r["pass"]): r for r in ours}
    for r in api:
        assert r["line"] == f"api:{r['api_of']}" and r["clock"] == "perf_counter"
        variant = own[(r["op"], r["T"], r["api_of"], r["pass"])]
        assert r["kernel_ms"] == variant["ms_median"]
        assert r["overhead_ms"] == pytest.approx(r["ms_median"] - r["kernel_ms"])
        assert 3 <= r["reps"] <= TINY.api_reps and r.get("host_ms") is None
        assert r["rel_err"] == variant["rel_err"]           # the API returns the variant's numbers
        assert r.get("flops") is None                       # no cost model: not a roofline point
    table = report.api_table(res)
    assert "API overhead us" in table and all(op in table for op in registry.OPS)
    assert "Host overhead of the public API" in report.markdown(res)
    assert report.api_table(dict(res, results=ours)) == ""
    assert "host_floor" not in res["meta"] and "host floor" not in table     # host grids: no GPU floor


def test_the_host_floor_is_shown_under_the_overhead_table(monkeypatch):
    res = harness.run_grid(replace(TINY, ops=("linear",), Ts=(4,), passes=("fwd",)), dict(FAKE_CEIL), echo=None)
    assert "host floor" not in report.api_table(res)
    res["meta"]["host_floor"] = {"before": dict(launch=21.04, alloc_launch=24.5, launch_host=6.25),
                                 "after": {"error": "RuntimeError: no device"}}
    table = report.api_table(res)
    assert "empty launch + sync 21.0 us, with a cupy.empty 24.5 us, launch alone (host) 6.2 us" in table
    assert "after: failed (RuntimeError: no device)" in table
    assert "host floor" in report.markdown(res)


def test_api_default_mode_times_the_backend_default_only():
    res = harness.run_grid(replace(TINY, api="default", ops=("linear",), Ts=(4,), passes=("fwd",)),
                           dict(FAKE_CEIL), echo=None)
    assert [r["line"] for r in res["results"] if r["kind"] == "api"] == ["api:numpy:chunked"]
    assert not [r for r in harness.run_grid(replace(TINY, api="off", ops=("linear",), Ts=(4,), passes=("fwd",)),
                                            dict(FAKE_CEIL), echo=None)["results"] if r["kind"] == "api"]
    with pytest.raises(ValueError, match="api mode"):
        lines.api_variants("linear", "float32", "some", [])


def test_wall_clock_takes_a_thousand_calls_of_a_fast_call_and_syncs_each():
    calls, syncs = [], []
    g = replace(TINY, api_reps=1000, api_budget_ms=10_000.0)
    t, extra = harness._time_wall(lambda: calls.append(1), lambda: syncs.append(1), g)
    assert t.reps == 1000 and t.clock == "wall+sync"
    assert len(syncs) >= harness.API_WARMUP + 1 + 1000      # one per timed call, plus one after the host loop
    assert extra["host_ms"] >= 0 and len(calls) == harness.API_WARMUP + 1 + 1000 + 1000


def test_the_bench_times_outputs_without_poisoning(monkeypatch):
    seen = []

    def fwd(q, k, v, **o):
        seen.append(backends.poisoning())
        return backends.new_output(np, v.shape, v.dtype), None
    probe = Variant("linear", "numpy", "probe", fwd, lambda ctx, d: None)
    real = lines.our_lines
    monkeypatch.setattr(lines, "our_lines", lambda op, b, e=(): real(op, b, e) + [probe])
    with backends.poisoned():
        res = harness.run_grid(replace(TINY, ops=("linear",), Ts=(4,), passes=("fwd",), api="off"),
                               dict(FAKE_CEIL), echo=None)
        assert backends.poisoning()
    assert seen and not any(seen) and res["meta"]["poisoning"] is False


def test_cli_bench_shows_the_api_overhead_table(tmp_path):
    from cli import main
    r = CliRunner().invoke(main, ["bench", "--grid", "cpu-api", "--T", "1", "--D", "4", "--op", "decayed",
                                  "--pass", "fwdbwd", "--md", str(tmp_path / "b.md")])
    assert r.exit_code == 0, r.output
    assert "host overhead of the public API" in r.output and "api:numpy:chunked" in r.output
    assert "API overhead us" in (tmp_path / "b.md").read_text()


def test_head_start_clock_holds_the_gpu_after_each_flush():
    from workbench.bench import timing

    class Clock:
        name = "cuda-event(fake)"

        def __init__(self):
            self.log = []

        def event(self):
            return [0.0]

        def record(self, ev):
            self.log.append("record")

        def elapsed_ms(self, a, b):
            return 1.0

        def sync(self):
            pass

        def flush(self):
            self.log.append("flush")

    base = Clock()
    clock = harness._HeadStart(base, 2.0)
    clock._spin = lambda: base.log.append("spin")
    t = timing.time_gpu(lambda: None, warmup=1, reps=3, flush_l2=True, clock=clock)
    assert base.log[2:] == ["flush", "spin", "record", "record"] * 3 and "head start" in clock.name
    assert t.reps == 3 and G.GRIDS["api"].head_start_ms > 0 and G.GRIDS["headline"].head_start_ms == 0
