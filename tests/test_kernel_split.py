"""``cli.py kernels`` (workbench/bench/kernels.py) without a GPU: the public API runs a CuPy variant against the
host-cost stand-in ``cupy`` (scripts/host_cost.py: launches do no device work) whose CUDA events tick a clock, one
unit per ``record``, so every traced launch shows as 1 ms.  What is checked is the tracing: every launch of the call
seen once, in order, labelled by its name expression, the span around them -- the numbers themselves come from a
GPU (``results/``)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRELUDE = r'''
import importlib.util, json, os, sys, types
spec = importlib.util.spec_from_file_location("host_cost", os.path.join(ROOT, "scripts", "host_cost.py"))
hc = importlib.util.module_from_spec(spec); spec.loader.exec_module(hc)
cp = hc.stand_in_cupy()
TICK = [0]
class Event:
    def record(self, stream=None):
        TICK[0] += 1; self.t = TICK[0]
    def synchronize(self):
        pass
cp.cuda.Event = Event
cp.cuda.get_elapsed_time = lambda a, b: float(b.t - a.t)
sys.modules["cupy"] = cp
os.environ.pop("WORKBENCH_POISON", None)
'''


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"ROOT = {ROOT!r}\n" + PRELUDE + code], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_every_launch_of_a_call_is_traced_in_order():
    r = _run(r'''
from workbench.bench.kernels import kernel_split
out = {}
for key in ("cupy:chunked_mma_dqr", "cupy:chunked_mma"):
    s = kernel_split("linear", key, "float16", T=4096, calls=3)
    out[key] = s.as_dict()
s = kernel_split("softmax", "cupy:fa2", "float16", T=1024, pass_="fwd", calls=2)
out["fwd"] = s.as_dict()
s = kernel_split("linear", "cupy:chunked", "float32", T=256, pass_="bwd", calls=2)     # launch(), not Prepared
out["launch"] = s.as_dict()
print(json.dumps(out))
''')
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    dqr, fused = out["cupy:chunked_mma_dqr"], out["cupy:chunked_mma"]
    names = [k["kernel"] for k in dqr["kernels"]]
    assert [n.split("<")[0] for n in names] == ["tc_seg_state", "tc_seg_scan", "tc_fwd", "tc_bwd_dq", "tc_seg_scan",
                                                "tc_bwd_dkdv"], names
    assert names[1] == "tc_seg_scan<false>" and names[4] == "tc_seg_scan<true>" and names[3].endswith(", true>")
    # the fused mode: the REV segment-state pass and no ESUM in the dq walker
    fnames = [k["kernel"].split("<")[0] for k in fused["kernels"]]
    assert fnames == ["tc_seg_state", "tc_seg_scan", "tc_fwd", "tc_seg_state", "tc_seg_scan", "tc_bwd_dq",
                      "tc_bwd_dkdv"], fnames
    for s in (dqr, fused):
        n = len(s["kernels"])
        assert [k["index"] for k in s["kernels"]] == list(range(n))
        assert all(k["us"] == 1000.0 for k in s["kernels"])            # one tick between each launch's events
        assert s["sum_us"] == 1000.0 * n and s["span_us"] == 1000.0 * (2 * n + 1)
        assert s["untraced_us"] == 1000.0 * (n + 1) and s["calls"] == 3 and s["pass"] == "fwdbwd"
    assert [k["kernel"].split("<")[0] for k in out["fwd"]["kernels"]] == ["fa2_fwd"]
    plain = out["launch"]                   # the CUDA-core chunked core launches through _module.launch
    assert plain["pass"] == "bwd" and plain["kernels"] and all(k["us"] == 1000.0 for k in plain["kernels"])
    assert all("<" in k["kernel"] for k in plain["kernels"]), plain["kernels"]


def test_cli_kernels_prints_and_writes_the_split(tmp_path):
    path = tmp_path / "k" / "split.json"
    r = _run(rf'''
from cli import main
main(["kernels", "--op", "decayed", "--backend", "cupy:chunked_mma_dqr", "--backend", "cupy:chunked_mma_dqr8r",
      "--T", "2048", "--calls", "2", "--json", {str(path)!r}])
''')
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    assert "tc_bwd_dkdv<wb_half, 64, 64, 1, 0, 2, 1>" in r.stdout       # dqr8r's roles walker (LAYOUT 2)
    assert "the call's GPU span" in r.stdout and f"wrote {path}" in r.stdout
    data = json.loads(path.read_text())
    assert [d["variant"] for d in data] == ["cupy:chunked_mma_dqr", "cupy:chunked_mma_dqr8r"]
    assert any(k["kernel"].startswith("tc_dg<") for k in data[0]["kernels"])     # d log_decay's kernels


def test_cli_kernels_takes_the_log_decays_asked_for(tmp_path):
    path = tmp_path / "split.json"
    r = _run(rf'''
from cli import main
main(["kernels", "--op", "decayed", "--backend", "cupy:chunked_mma_dqr", "--T", "256", "--calls", "1",
      "--log-decay-range", "-30", "-20", "--json", {str(path)!r}])
''')
    assert r.returncode == 0, r.stderr[-3000:] + r.stdout[-2000:]
    assert "log decays in [-30, -20]" in r.stdout
    assert json.loads(path.read_text())[0]["log_decay_range"] == [-30.0, -20.0]


def test_cell_inputs_draw_the_log_decays_in_the_range_given():
    from workbench.bench.harness import cell_inputs
    (q, k, v, g), _ = cell_inputs("decayed", 1, 2, 300, 8, "float32", 0, log_decay_range=(-30.0, -20.0))
    assert g.shape == (1, 2, 300) and g.min() >= -30.0 and g.max() <= -20.0 and g.max() - g.min() > 5.0
    (_, _, _, g0), _ = cell_inputs("decayed", 1, 2, 300, 8, "float32", 0)           # the bench's own
    assert g0.min() >= -1.0 and g0.max() <= -0.01


@pytest.mark.parametrize("args, message", [
    (["--op", "linear", "--backend", "numpy"], "CuPy variants only"),
    (["--op", "linear", "--backend", "cupy:chunked_mma_tf32", "--dtype", "float16"], "does not run float16"),
    (["--op", "linear", "--backend", "cupy", "--log-decay-range", "-1", "0"], "only the decayed op"),
    (["--op", "decayed", "--backend", "cupy", "--log-decay-range", "-1", "0.5"], "expected finite LO <= HI <= 0"),
    (["--op", "decayed", "--backend", "cupy", "--log-decay-range", "0", "-1"], "expected finite LO <= HI <= 0"),
])
def test_cli_kernels_refuses_what_it_cannot_trace(args, message):
    r = _run(rf'''
from cli import main
main(["kernels"] + {args!r})
''')
    assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
