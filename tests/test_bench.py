"""The timing harness on the NumPy backend: a tiny grid end to end, failures recorded per cell, the GPU
timing loop driven by a fake clock, the ZeroS prefix-sum peer's formula, the CLI."""
import json
import time
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

import workbench as wb
from workbench.bench import ceilings, grid as G, harness, lines, peers, report, timing
from workbench.inputs import random_inputs
from workbench.registry import Variant

FAKE_CEIL = {"device": "test host", "bw": 10e9, "flops": {"float32": 100e9, "float64": 50e9}}
TINY = replace(G.GRIDS["cpu"], Ts=(16, 32), Ds=(4,), lead=(1, 2), target_ms=2.0, budget_s=60)


@pytest.fixture(autouse=True)
def _ceiling_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ceilings, "measure_host", lambda echo=None: dict(FAKE_CEIL, method={}, errors={}))


def test_tiny_grid_end_to_end(tmp_path):
    res = harness.run_grid(TINY, dict(FAKE_CEIL), echo=None)
    rows = res["results"]
    assert res["meta"]["complete"] and res["meta"]["grid"]["name"] == "cpu"
    # 4 ops x 2 T x 2 NumPy variants x 3 passes, all measured
    assert len(rows) == 4 * 2 * 2 * 3
    assert all(r["status"] == "ok" for r in rows), [r["note"] for r in rows if r["status"] != "ok"]
    for r in rows:
        for f in ("ms_median", "ms_q1", "ms_q3", "flops", "bytes", "intensity", "tflops", "gbps", "roof_frac",
                  "vs_baseline", "rel_err"):
            assert r[f] is not None and np.isfinite(r[f]), f
        assert r["ms_min"] <= r["ms_q1"] <= r["ms_median"] <= r["ms_q3"] <= r["ms_max"]
        assert r["baseline"] == "numpy:explicit" and r["clock"] == "perf_counter"
        assert r["rel_err"] < 1e-4                      # both references agree (float32)
        if r["line"] == "numpy:explicit":
            assert r["vs_baseline"] == 1.0
    path = tmp_path / "r.json"
    report.write_json(res, str(path))
    back = json.loads(path.read_text())
    assert back["results"][0].keys() >= {"op", "T", "pass", "line", "ms_median", "roof_frac"}
    report.write_csv(res, str(tmp_path / "r.csv"))
    assert len((tmp_path / "r.csv").read_text().splitlines()) == len(rows) + 1
    md = report.markdown(res)
    assert "speed-up" in md and "numpy:chunked" in md


def test_failures_are_recorded_not_raised(monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("kernel exploded")
    bad = Variant("linear", "numpy", "broken", boom, boom)
    half = Variant("linear", "numpy", "nobwd", lambda q, k, v, **o: (v.copy(), None), boom)
    real = lines.our_lines
    monkeypatch.setattr(lines, "our_lines", lambda op, b, e=(): real(op, b, e) + [bad, half])
    g = replace(TINY, ops=("linear",), Ts=(16,))
    res = harness.run_grid(g, dict(FAKE_CEIL), echo=None)
    by = {(r["line"], r["pass"]): r for r in res["results"]}
    assert by[("numpy:broken", "fwd")]["status"] == "error"
    assert "kernel exploded" in by[("numpy:broken", "fwd")]["note"]
    assert by[("numpy:nobwd", "fwd")]["status"] == "ok"
    assert by[("numpy:nobwd", "bwd")]["status"] == "error"
    assert by[("numpy:chunked", "fwdbwd")]["status"] == "ok"
    assert "kernel exploded" in report.problems(res)


def test_a_ceiling_under_a_rows_rate_is_reported():
    """A roofline above 100% means the ceiling is no bound (measured while the GPU was busy, say): problems() names
    the ceiling and the table marks the cells, where before it printed 162% as if it were a fraction of a bound."""
    g = replace(TINY, ops=("linear",), Ts=(16,))
    fine = harness.run_grid(g, dict(FAKE_CEIL), echo=None)
    assert not report.ceilings_beaten(fine) and "ceiling" not in report.problems(fine)
    low = harness.run_grid(g, dict(FAKE_CEIL, bw=1.0), echo=None)               # 1 byte/s: the bytes set every bound
    beaten = report.ceilings_beaten(low)
    assert len(beaten) == 1 and beaten[0].startswith("copy ")
    assert "ceiling copy" in report.problems(low) and "%?" in report.full_table(low)
    flops_low = harness.run_grid(g, dict(FAKE_CEIL, flops={"float32": 1.0, "float64": 1.0}), echo=None)
    assert [b.split()[0] for b in report.ceilings_beaten(flops_low)] == ["float32"]    # the grid's dtype


def test_budget_skips_cells():
    res = harness.run_grid(replace(TINY, budget_s=0.0), dict(FAKE_CEIL), echo=None)
    assert len(res["skipped_cells"]) == len(TINY.cells()) - 1     # the first cell always runs


def test_grid_filters_and_limits():
    g = G.get_grid("headline").filtered(ops=("zeros",), dtypes=("float32",), Ts=(2048,), backends=("cupy",))
    assert g.cells() == [("zeros", 2048, 64, "float32", True)]
    assert g.backends == ("cupy",) and not g.peers
    assert g.too_long("cupy:naive", 16384) and not g.too_long("cupy:naive", 1024)
    assert not g.too_long("cupy:chunked", 16384)
    assert all(c[0] != "decayed" or c[4] for c in G.get_grid("default").cells())
    with pytest.raises(ValueError):
        G.get_grid("nope")


class FakeClock:
    """Duck-typed CUDA-event clock on perf_counter; logs what happens in order."""
    name = "fake"

    def __init__(self):
        self.log = []

    def event(self):
        return [None]

    def record(self, ev):
        ev[0] = time.perf_counter()
        self.log.append("record")

    def elapsed_ms(self, a, b):
        return (b[0] - a[0]) * 1e3

    def sync(self):
        pass

    def flush(self):
        self.log.append("flush")


def test_time_gpu_loop_with_a_fake_clock():
    clock = FakeClock()
    calls = []
    t = timing.time_gpu(lambda: (calls.append(1), time.sleep(0.001)), warmup=2, reps=7, flush_l2=True,
                        clock=clock)
    assert t.reps == 7 and len(calls) == 2 + 7
    assert 0.5 < t.ms_median < 50 and t.clock == "fake"
    timed = clock.log[4:]                      # after the two timed warm-ups: flush, record, record per rep
    assert timed == ["flush", "record", "record"] * 7
    # reps chosen from the last warm-up's time: ~1 ms each, 20 ms target -> about 20
    t = timing.time_gpu(lambda: time.sleep(0.001), target_ms=20, min_reps=3, max_reps=1000, flush_l2=False,
                        clock=FakeClock())
    assert 3 <= t.reps <= 25


def test_time_host_and_summary():
    t = timing.time_host(lambda: sum(range(1000)), reps=9)
    assert t.reps == 9 and t.ms_min <= t.ms_median <= t.ms_max
    s = timing.summarize([1, 2, 3, 4, 100], "x")
    assert s.ms_median == 3 and s.ms_q1 == 2 and s.ms_q3 == 4


def test_zeros_prefix_sum_form_matches_the_reference():
    for causal in (True, False):
        for n_gates in (2, 3):
            arrays = random_inputs("zeros", lead=(3,), T=12, Dk=4, Dv=3, n_gates=n_gates, seed=5)
            n = np.arange(1, 13.0) if causal else np.full(12, 12.0)
            o = peers.zeros_prefix_sum(np, *arrays, causal, n)
            ref = wb.zeros_attention(*arrays, causal=causal, backend="numpy:explicit")
            np.testing.assert_allclose(o, ref, rtol=1e-10, atol=1e-12)


def test_peer_is_skipped_when_its_library_is_missing():
    p = peers.Peer("ghost", "linear", "surely_not_an_installed_module", lambda *a: None)
    assert "not importable" in p.why_not("float32", {"causal": True}, None)
    assert "dtype" in p.why_not("float64", {"causal": True}, None)
    assert {p.op for p in peers.PEERS} == {"softmax", "linear", "decayed", "zeros"}


def test_ceilings_cache_and_overrides():
    c = ceilings.get_ceilings(gpu=False, peak_bw=5e9, peak_flops={"float32": 1e12})
    assert c["bw"] == 5e9 and c["flops"]["float32"] == 1e12 and c["flops"]["float64"] == 50e9
    again = ceilings.get_ceilings(gpu=False)
    assert again["source"].startswith("cache") and again["bw"] == FAKE_CEIL["bw"]
    assert ceilings.parse_peak_flops(["float16=658", "tf32=371"]) == {"float16": 658e12, "tf32": 371e12}
    with pytest.raises(ValueError):
        ceilings.parse_peak_flops(["658"])


def test_cli_bench_cpu_grid(tmp_path):
    from cli import main
    out = tmp_path / "b.json"
    r = CliRunner().invoke(main, ["bench", "--grid", "cpu", "--T", "16", "--D", "4", "--op", "softmax",
                                  "--json", str(out), "--csv", str(tmp_path / "b.csv"), "--md",
                                  str(tmp_path / "b.md")])
    assert r.exit_code == 0, r.output
    assert "speed-up" in r.output and out.exists() and (tmp_path / "b.md").exists()
    r = CliRunner().invoke(main, ["bench", "--from-json", str(out), "--short"])
    assert r.exit_code == 0 and "numpy:explicit" in r.output and "speed-up" in r.output


def test_cli_bench_gpu_grid_without_a_gpu_is_a_usage_error(monkeypatch):
    """On a machine without a GPU (made so here, whatever this machine has), a GPU grid is refused with exit
    status 2 and a message naming the grid and the way out, before anything is timed."""
    from cli import main
    from workbench.bench import api
    monkeypatch.setattr(api, "gpu_available", lambda: False)
    monkeypatch.setattr(api, "run_grid", lambda *a, **kw: pytest.fail("a GPU grid ran without a GPU"))
    r = CliRunner().invoke(main, ["bench", "--grid", "headline"])
    assert r.exit_code == 2, r.output
    assert "grid 'headline' needs a CUDA GPU" in r.output and "use --grid cpu" in r.output


def test_sticky_cuda_errors_are_recognised():
    rows = [dict(line="cupy:x", op="softmax", T=8, status="error", note="CUDARuntimeError: an illegal memory access "
                 "was encountered", **{"pass": "fwd"}), dict(line="y", op="softmax", T=8, status="ok", note="")]
    assert "cupy:x" in harness.sticky_error(rows)
    assert harness.sticky_error(rows[1:]) is None


def test_backend_filter_takes_groups_and_line_keys():
    g = G.get_grid("headline").filtered(backends=("cupy", "peer:sdpa-flash"))
    assert g.backends == ("cupy",) and g.peers
    assert g.wants("cupy:flash") and g.wants("peer:sdpa-flash")
    assert not g.wants("peer:sdpa-cudnn") and not g.wants("numba:flash")
    g = G.get_grid("cpu").filtered(backends=("numpy:chunked",))
    assert g.backends == ("numpy",) and not g.peers
    assert g.wants("numpy:chunked") and not g.wants("numpy:explicit")


def test_merge_joins_runs_of_one_device_and_the_cli_saves_it(tmp_path):
    """A GPU session split over device calls: results merged, rows ordered by op/dtype/T, runs listed."""
    from cli import main
    paths = []
    for op in ("zeros", "softmax"):
        out = tmp_path / f"{op}.json"
        r = CliRunner().invoke(main, ["bench", "--grid", "cpu", "--T", "16", "--D", "4", "--op", op,
                                      "--pass", "fwd", "--json", str(out)])
        assert r.exit_code == 0, r.output
        paths.append(out)
    a, b = (report.read_json(str(p)) for p in paths)
    m = report.merge([a, b])
    assert len(m["results"]) == len(a["results"]) + len(b["results"])
    assert [r["op"] for r in m["results"]][0] == "softmax" and m["results"][-1]["op"] == "zeros"
    assert [x["grid"] for x in m["meta"]["merged_from"]] == ["cpu", "cpu"]
    other = json.loads(json.dumps(b))
    other["meta"]["device"] = "another device"
    with pytest.raises(ValueError, match="different devices"):
        report.merge([a, other])
    merged = tmp_path / "merged.json"
    r = CliRunner().invoke(main, ["bench", "--from-json", str(paths[0]), "--from-json", str(paths[1]),
                                  "--json", str(merged), "--short"])
    assert r.exit_code == 0, r.output
    assert len(report.read_json(str(merged))["results"]) == len(m["results"])


def test_the_budget_does_not_count_the_lines_first_calls(monkeypatch):
    """Compiles and a peer's autotuning happen in a line's set-up and first call per pass: the budget counts timing
    only, so a first call that took "forever" leaves the budget for the cells after it."""
    monkeypatch.setattr(harness, "_first_call", lambda prep, pass_, clocks: 1e6)
    res = harness.run_grid(replace(TINY, budget_s=0.0), dict(FAKE_CEIL), echo=None)
    assert res["skipped_cells"] == [] and res["meta"]["setup_s"] >= 1e6


def test_a_first_call_runs_the_pass_once_and_waits_for_it():
    calls, synced = [], []
    prep = lines.Prepared(lambda: calls.append("fwd"), None, lambda: calls.append("fwdbwd"), "wall",
                          sync=lambda: synced.append(1))
    assert harness._first_call(prep, "fwdbwd", harness._Clocks()) >= 0 and calls == ["fwdbwd"] and synced == [1]
    assert harness._first_call(prep, "bwd", harness._Clocks()) == 0.0 and calls == ["fwdbwd"]
