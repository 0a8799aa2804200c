"""The command line refuses junk up front (exit 2, one line naming the bad value), exits non-zero when nothing
ran or anything failed, creates the folders of the files it writes, and writes into a scratch folder unless
told otherwise.  Every test runs in a fresh temporary working directory."""
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

import cli
import workbench as wb
from workbench.backends import gpu_available
from workbench.bench import api, ceilings, timing

HAS_GPU = gpu_available()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_CEIL = {"device": "test host", "bw": 10e9, "flops": {"float32": 100e9, "float64": 50e9}}
TINY = ["--grid", "cpu", "--T", "16", "--D", "4", "--op", "softmax", "--pass", "fwd"]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ceilings, "measure_host", lambda echo=None: dict(FAKE_CEIL, method={}, errors={}))


def invoke(*args):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def refused(r, *words):
    """Exit status 2 and one 'Error:' line naming every word."""
    assert r.exit_code == 2, r.output
    errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, r.output
    for w in words:
        assert w in errors[0], r.output
    assert "Traceback" not in r.output


# ----------------------------------------------------------------------------- item 1: --version
def test_version():
    r = invoke("--version")
    assert r.exit_code == 0 and r.output.strip() == f"workbench, version {wb.__version__}"


# ----------------------------------------------------------------------------- item 3: README's check command
def test_readme_check_json_into_a_missing_folder():
    """README's command, as a user runs it: a fresh process, no simulator (NUMBA_ENABLE_CUDASIM unset)."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    readme = ["check", "--op", "zeros", "--json", "out/check.json"]
    r = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), *readme], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    cells = json.load(open("out/check.json"))["cells"]
    assert cells and all(c["op"] == "zeros" and c["ok"] for c in cells)


# ----------------------------------------------------------------------------- item 4: bad options, exit 2
# Per command, options it must refuse, each named in the error: "--name value" (or two flags that exclude
# each other)
BAD_OPTIONS = {
    "bench": ["--op bogus", "--dtype float99", "--T 0", "--D -4", "--budget 0", "--peak-flops 658",
              "--backend numpy:bogus", "--backend tpu", "--seed -1"],
    "check": ["--dtype float128", "--op cosine", "--jobs -2", "--quick --full"],
    "experiment sparsity": ["--backend numpy:bogus", "--seed -3"],
    "scaling": ["--op bogus"],
}


@pytest.mark.parametrize("command, option", [(c, o) for c, opts in BAD_OPTIONS.items() for o in opts])
def test_bad_option_is_refused_naming_it(command, option):
    refused(invoke(*command.split(), *option.split()), *option.split())


@pytest.mark.parametrize("args, words", [
    (["experiment", "sparsity", "--quick", "--update-results"], ["--update-results", "--quick"]),
    (["roofline", "missing.json"], ["missing.json"]),
])
def test_bad_arguments_are_refused_naming_them(args, words):
    refused(invoke(*args), *words)


def test_experiment_variant_must_exist_for_every_op():
    refused(invoke("experiment", "sparsity", "--backend", "numpy:tiled"), "numpy:tiled")


@pytest.mark.skipif(HAS_GPU, reason="checks the refusal on a machine without a GPU")
def test_gpu_backends_are_refused_without_a_gpu():
    refused(invoke("bench", "--backend", "cupy"), "--backend", "cupy", "cannot run on this machine")
    refused(invoke("bench", "--backend", "peer"), "--backend", "peer", "cannot run on this machine")
    refused(invoke("check", "--backend", "cupy"), "--backend", "cupy")


@pytest.mark.skipif(HAS_GPU, reason="the simulator runs only without a GPU")
def test_bench_refuses_numba_on_the_simulator():
    assert os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    refused(invoke("bench", "--backend", "numba"), "--backend", "simulator")


def test_roofline_and_bench_refuse_a_check_json():
    assert invoke("check", "--op", "softmax", "--quick", "--backend", "numpy", "--json", "check.json").exit_code == 0
    refused(invoke("roofline", "check.json"), "check.json", "not a bench result")
    refused(invoke("bench", "--from-json", "check.json"), "--from-json", "not a bench result")
    refused(invoke("scaling", "--json", "check.json"), "--json", "not a bench result")


# ----------------------------------------------------------------------------- item 4: dtypes that run
def test_check_float16_on_the_numpy_backend():
    r = invoke("check", "--op", "softmax", "--backend", "numpy", "--quick", "--dtype", "float16")
    assert r.exit_code == 0, r.output
    rows = [line for line in r.output.splitlines() if line.startswith("softmax") and "numpy:chunked" in line]
    assert rows and all(" float16 " in line and line.rstrip().endswith("ok") for line in rows), r.output


# ----------------------------------------------------------------------------- item 4: nothing ran / failed
def test_bench_that_measures_nothing_exits_1():
    r = invoke("bench", *TINY, "--dtype", "bfloat16")          # no NumPy variant takes bfloat16: all skips
    assert r.exit_code == 1, r.output
    assert "nothing was measured" in r.output


def test_bench_with_a_failing_measurement_exits_1(fail_when):
    from workbench.bench import lines
    fail_when(lines, "prepare_variant", lambda variant: variant.key == "numpy:chunked",
              RuntimeError("broken on purpose"))
    r = invoke("bench", *TINY)
    assert r.exit_code == 1, r.output
    assert "failed" in r.output and "broken on purpose" in r.output


def test_roofline_with_nothing_to_plot_exits_1_and_writes_nothing():
    assert invoke("bench", *TINY, "--json", "b.json").exit_code == 0
    r = invoke("roofline", "b.json", "--dtype", "float16", "--out", "r.png")
    assert r.exit_code == 1 and "no ok measurement" in r.output
    assert not os.path.exists("r.png")


def test_experiment_failure_exits_1(monkeypatch):
    from experiments import zeros_dilution

    def boom(**kw):
        raise RuntimeError("broken on purpose")

    monkeypatch.setattr(zeros_dilution, "run", boom)
    r = invoke("experiment", "zeros-dilution", "--quick", "--quiet")
    assert r.exit_code == 1 and "broken on purpose" in r.output and "Traceback" not in r.output


# ----------------------------------------------------------------------------- item 2: where files go
def test_output_paths_create_their_folders():
    r = invoke("bench", *TINY, "--json", "a/b/c.json", "--csv", "d/e.csv", "--md", "f/g/h.md")
    assert r.exit_code == 0, r.output
    assert all(os.path.exists(p) for p in ("a/b/c.json", "d/e.csv", "f/g/h.md"))
    r = invoke("roofline", "a/b/c.json", "--out", "x/y/roof.png")
    assert r.exit_code == 0 and os.path.exists("x/y/roof.png"), r.output
    r = invoke("scaling", "--json", "a/b/c.json", "--out", "z/scal.png")
    assert r.exit_code == 0 and os.path.exists("z/scal.png"), r.output


def test_plots_default_to_the_scratch_folder():
    assert invoke("bench", *TINY, "--json", "b.json").exit_code == 0
    assert invoke("roofline", "b.json").exit_code == 0
    assert invoke("scaling", "--json", "b.json").exit_code == 0
    assert sorted(os.listdir("out")) == ["roofline.png", "scaling.png"]
    assert not os.path.exists("roofline.png") and not os.path.exists("scaling.png")


def _git_status(path):
    return subprocess.run(["git", "status", "--porcelain", "--", path], cwd=ROOT, capture_output=True,
                          text=True, check=True).stdout


def test_experiment_writes_to_scratch_and_leaves_committed_results_alone():
    before = _git_status("results")
    r = invoke("experiment", "zeros-dilution", "--quick", "--quiet")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(os.path.join("out", "experiments"))) == ["zeros_dilution.json", "zeros_dilution.png"]
    assert _git_status("results") == before


# ----------------------------------------------------------------------------- item 5: threads and noise
def test_host_bench_pins_blas_threads_and_records_them():
    pytest.importorskip("threadpoolctl")
    assert invoke("bench", *TINY, "--json", "b.json").exit_code == 0
    threads = json.load(open("b.json"))["meta"]["host_threads"]
    assert threads["pinned"] and threads["requested"] == 1
    assert all(p["threads"] == 1 for p in threads["pools"])
    assert invoke("bench", *TINY, "--blas-threads", "0", "--json", "c.json").exit_code == 0
    assert not json.load(open("c.json"))["meta"]["host_threads"]["pinned"]


def test_noisy_timings_are_flagged():
    quiet = timing.summarize([1.0, 1.0, 1.05, 1.1, 1.1], "perf_counter")
    loud = timing.summarize([1.0, 1.0, 2.0, 3.0, 3.0], "perf_counter")
    assert not quiet.noisy and quiet.as_dict()["noisy"] is False
    assert loud.noisy and loud.as_dict()["noisy"] is True
    row = dict(op="softmax", T=16, Dk=4, dtype="float32", line="numpy:chunked", status="ok", note="x",
               ms_q1=1.0, ms_median=2.0, ms_q3=3.0, **{"pass": "fwd"})
    ok_row = dict(row, ms_q1=1.9, ms_q3=2.1)
    result = api.flag_noisy({"meta": {}, "results": [row, ok_row]})
    assert row["noisy"] and row["note"] == "noisy: IQR 100% of median; x"
    assert not ok_row["noisy"] and ok_row["note"] == "x"
    api.flag_noisy(result)                                   # idempotent
    assert row["note"] == "noisy: IQR 100% of median; x"
    assert "softmax T=16" in api.noisy_report(result) and "IQR 100%" in api.noisy_report(result)
