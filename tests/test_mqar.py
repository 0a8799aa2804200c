"""The trained-model experiment: the model's hand-derived gradient against finite differences, the recall
task generators, the optimiser, a tiny training run that learns, and the resumable sweep."""
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from experiments import model as M
from experiments import mqar
from experiments.recall_tasks import IGNORE, MQAR, DifferenceRecall, power_law_gaps, sample_distinct


# ============================================================================ gradient check
def _tiny(mixer, **kw):
    cfg = M.ModelConfig(mixer=mixer, vocab=16, width=8, heads=2, layers=2, **kw)
    P = M.init_params(cfg, seed=3, dtype=np.float64)
    rng = np.random.default_rng(7)
    for k in P:                          # move off the symmetric start (shift d = 0, zero biases)
        P[k] = P[k] + 0.3 * rng.standard_normal(P[k].shape)
    batch = MQAR(vocab=16, seq_len=12, kv_pairs=3).batch(np.random.default_rng(0), 2)
    return cfg, P, batch


def gradient_errors(cfg, P, batch, backend="numpy", eps=1e-6, seed=11):
    """Per parameter tensor: relative error of the model's gradient along a random direction d against
    the central difference (L(P + eps d) - L(P - eps d)) / (2 eps), float64."""
    model = M.Model(cfg, backend)
    _, G = model.loss_and_grads(P, batch.tokens, batch.labels)
    assert set(G) == set(P)
    rng = np.random.default_rng(seed)
    errs = {}
    for name in P:
        d = rng.standard_normal(P[name].shape)
        plus, minus = dict(P), dict(P)
        plus[name], minus[name] = P[name] + eps * d, P[name] - eps * d
        fd = (model.evaluate(plus, batch.tokens, batch.labels).loss
              - model.evaluate(minus, batch.tokens, batch.labels).loss) / (2 * eps)
        an = float((G[name] * d).sum())
        errs[name] = abs(fd - an) / max(abs(fd), abs(an), 1e-8)
    return errs


@pytest.mark.parametrize("mixer", list(M.MIXERS))
def test_model_gradient_matches_finite_differences(mixer):
    cfg, P, batch = _tiny(mixer)
    errs = gradient_errors(cfg, P, batch)
    assert max(errs.values()) < 1e-5, {k: v for k, v in errs.items() if v >= 1e-5}


@pytest.mark.parametrize("kw", [dict(shift=False), dict(out_norm=False)])
def test_model_gradient_without_shift_or_out_norm(kw):
    cfg, P, batch = _tiny("zeros3", **kw)
    assert max(gradient_errors(cfg, P, batch, backend="numpy:explicit").values()) < 1e-5


@pytest.mark.parametrize("layer, method, broken", [
    ("RMSNorm", "backward", lambda ctx, g, dy: (dy * (1 if g is None else g) / ctx[1],
                                                None if g is None else (dy * ctx[0]).reshape(-1, ctx[0].shape[-1]).sum(0))),
    ("SiLU", "backward", lambda z, dy: dy * M.sigmoid(z)),
    ("TokenShift", "unshift", lambda z: z),
])
def test_gradient_check_catches_a_broken_backward(monkeypatch, layer, method, broken):
    """The check above is sensitive: one layer's backward made wrong (the RMSNorm projection term dropped,
    SiLU's derivative truncated, the token shift's adjoint not shifted) fails it."""
    cfg, P, batch = _tiny("softmax")
    monkeypatch.setattr(getattr(M, layer), method, staticmethod(broken))
    assert max(gradient_errors(cfg, P, batch).values()) > 1e-3


def test_model_rejects_bad_config_and_empty_batch():
    with pytest.raises(ValueError, match="unknown mixer"):
        M.ModelConfig(mixer="nope", vocab=8, width=8)
    with pytest.raises(ValueError, match="multiple of heads"):
        M.ModelConfig(mixer="softmax", vocab=8, width=10, heads=4)
    cfg = M.ModelConfig(mixer="softmax", vocab=8, width=8)
    P = M.init_params(cfg, 0)
    with pytest.raises(ValueError, match="no queried position"):
        M.Model(cfg).evaluate(P, np.zeros((1, 4), np.int64), np.full((1, 4), IGNORE))


def test_init_is_deterministic_and_param_counts_match():
    cfg = M.ModelConfig(mixer="zeros3", vocab=20, width=16, heads=2)
    a, b = M.init_params(cfg, 5), M.init_params(cfg, 5)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["b0.wq"], M.init_params(cfg, 6)["b0.wq"])
    assert M.count_params(cfg) == sum(v.size for v in a.values())
    base = M.count_params(replace(cfg, mixer="softmax"))
    assert M.count_params(replace(cfg, mixer="linear-elu1")) == base
    D, H = cfg.width, cfg.heads
    assert M.count_params(replace(cfg, mixer="decayed")) == base + 2 * (D * H + H)
    assert M.count_params(cfg) == base + 2 * (D * H + D * 3 * H + 3 * H)


# ============================================================================ optimiser
def test_adamw_schedule_and_first_step():
    opt = M.AdamW(lr=1.0, steps=110, warmup=10, min_ratio=0.1, weight_decay=0.0, clip=0.0)
    assert opt.lr_at(5) == pytest.approx(0.5) and opt.lr_at(10) == pytest.approx(1.0)
    assert opt.lr_at(60) == pytest.approx(0.55) and opt.lr_at(110) == pytest.approx(0.1)
    p = {"embed": np.array([[1.0, -2.0]])}
    opt.step(p, {"embed": np.array([[0.5, -3.0]])})      # first Adam step: -lr_1 * sign(g)
    np.testing.assert_allclose(p["embed"], [[1.0 - 0.1, -2.0 + 0.1]], rtol=1e-6)


def test_adamw_weight_decay_on_matrices_only_and_clipping():
    opt = M.AdamW(lr=0.1, steps=10, weight_decay=0.5, clip=1.0)
    p = {"embed": np.ones((2, 2)), "norm_f": np.ones(2)}
    norm = opt.step(p, {"embed": np.zeros((2, 2)), "norm_f": np.zeros(2)})
    assert norm == 0.0
    np.testing.assert_allclose(p["embed"], 1 - opt.lr_at(1) * 0.5)
    np.testing.assert_allclose(p["norm_f"], 1.0)
    g = {"embed": np.full((2, 2), 30.0), "norm_f": np.full(2, 40.0)}
    assert opt.step(p, g) == pytest.approx(math.sqrt(4 * 900 + 2 * 1600))


def test_adamw_clips_on_the_device_as_on_the_host():
    """Clipping scales g by min(1, clip / |g|): the same trajectory as an unclipped optimiser fed the
    pre-scaled gradients (one step above the clip, one below)."""
    rng = np.random.default_rng(0)
    g1, g2 = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    g1 *= 50 / np.linalg.norm(g1)
    g2 *= 0.5 / np.linalg.norm(g2)
    start = rng.standard_normal((3, 4))
    a, b = {"embed": start.copy()}, {"embed": start.copy()}
    clipped, plain = M.AdamW(lr=0.1, steps=10, clip=1.0), M.AdamW(lr=0.1, steps=10, clip=0.0)
    assert float(clipped.step(a, {"embed": g1})) == pytest.approx(50)
    plain.step(b, {"embed": g1 / 50})
    clipped.step(a, {"embed": g2})
    plain.step(b, {"embed": g2})
    np.testing.assert_allclose(a["embed"], b["embed"], rtol=1e-12)


# ============================================================================ generators
def test_mqar_layout():
    task = MQAR(vocab=64, seq_len=48, kv_pairs=6)
    b = task.batch(np.random.default_rng(1), 200)
    assert b.tokens.shape == b.labels.shape == (200, 48)
    n, half = 6, 32
    for tok, lab in zip(b.tokens, b.labels):
        keys, vals = tok[0:2 * n:2], tok[1:2 * n:2]
        assert len(set(keys)) == n and len(set(vals)) == n
        assert keys.min() >= 1 and keys.max() < half and vals.min() >= half and vals.max() < 64
        q = np.nonzero(lab != IGNORE)[0]
        assert len(q) == n and np.all(q >= 2 * n) and np.all((q - 2 * n) % 2 == 0)
        assert sorted(tok[q]) == sorted(keys)                              # every key queried once
        answer = dict(zip(keys, vals))
        assert all(lab[p] == answer[tok[p]] for p in q)
        rest = np.ones(48, bool)
        rest[:2 * n] = False
        rest[q] = False
        assert np.all(tok[rest] == 0)                                       # filler


def test_mqar_is_deterministic_and_validates():
    task = MQAR(vocab=32, seq_len=32, kv_pairs=4)
    a, b = task.batch(np.random.default_rng(3), 5), task.batch(np.random.default_rng(3), 5)
    assert np.array_equal(a.tokens, b.tokens) and np.array_equal(a.labels, b.labels)
    rf = MQAR(vocab=32, seq_len=32, kv_pairs=4, random_fill=True).batch(np.random.default_rng(3), 50)
    assert (rf.tokens[:, 8:][rf.labels[:, 8:] == IGNORE] != 0).mean() > 0.8
    with pytest.raises(ValueError, match="4 \\* kv_pairs <= seq_len"):
        MQAR(vocab=64, seq_len=16, kv_pairs=5)
    with pytest.raises(ValueError, match="even seq_len"):
        MQAR(vocab=64, seq_len=17, kv_pairs=2)
    with pytest.raises(ValueError, match="needs vocab"):
        MQAR(vocab=8, seq_len=64, kv_pairs=4)


def test_power_law_gaps_are_the_sequential_draw():
    """The first gap drawn is distributed as p_g ∝ (g+1)^(a-1); gaps in a row are distinct; small a
    favours short gaps (the Zoology choice)."""
    rng = np.random.default_rng(0)
    g = power_law_gaps(rng, 40000, 5, 3, 0.3)
    assert all(len(set(r)) == 3 for r in g[:500])
    p = np.arange(1, 6) ** (0.3 - 1)
    p /= p.sum()
    freq = np.bincount(g[:, 0], minlength=5) / len(g)
    np.testing.assert_allclose(freq, p, atol=0.01)
    # second draw: P(second = j) = sum_i p_i p_j / (1 - p_i)
    second = np.array([sum(p[i] * p[j] / (1 - p[i]) for i in range(5) if i != j) for j in range(5)])
    np.testing.assert_allclose(np.bincount(g[:, 1], minlength=5) / len(g), second, atol=0.01)
    assert power_law_gaps(rng, 2000, 50, 1, 0.01).mean() < 15                # uniform would give 24.5
    with pytest.raises(ValueError):
        power_law_gaps(rng, 1, 3, 4, 0.5)
    s = sample_distinct(rng, 100, 10, 10, offset=5)
    assert np.all(np.sort(s, 1) == np.arange(5, 15))


def test_difference_recall_layout():
    task = DifferenceRecall(keys=20, values=5, seq_len=64, kv_pairs=8)
    assert task.model_vocab == 1 + 20 + 5 + 9
    b = task.batch(np.random.default_rng(2), 100)
    n = 8
    for tok, lab in zip(b.tokens, b.labels):
        keys, nums = tok[0:2 * n:2], tok[1:2 * n:2] - task.value_base
        assert len(set(keys)) == n and keys.min() >= 1 and keys.max() <= 20
        assert nums.min() >= 0 and nums.max() < 5
        q = np.nonzero(lab != IGNORE)[0]
        assert len(q) == n and np.all((q - 1 - 2 * n) % 3 == 0)
        value = dict(zip(keys, nums))
        for p in q:
            ka, kb = tok[p - 1], tok[p]
            assert ka != kb and ka in value and kb in value
            assert lab[p] == task.answer_base + value[ka] - value[kb] + 4
    assert b.labels[b.labels != IGNORE].min() >= task.answer_base
    assert b.labels.max() < task.model_vocab
    with pytest.raises(ValueError, match="5 \\* kv_pairs"):
        DifferenceRecall(keys=20, values=5, seq_len=30, kv_pairs=8)


# ============================================================================ training
def test_tiny_training_run_learns(monkeypatch):
    """Softmax on an easy MQAR (T = 16, 2 pairs): the held-out loss falls below half its initial value and
    the accuracy leaves chance (1 in 8 values) far behind, in about a second.  The batches go to the device
    10 at a time, the evaluations stay every 25 steps."""
    monkeypatch.setattr(mqar, "TRANSFER_STEPS", 10)
    grid = replace(mqar.GRIDS["quick"], eval_every=25, test_size=64)
    spec = mqar.RunSpec("mqar", "softmax", 16, 16, 2, 16, 0, 1, 2, steps=150, batch=16, lr=1e-2, seed=0)
    rec = mqar.train(spec, grid)
    c = rec["curve"]
    assert c["step"] == list(range(0, rec["steps_run"] + 1, 25))
    assert c["step"][0] == 0 and c["test_accuracy"][0] < 0.3
    assert c["test_loss"][-1] < 0.5 * c["test_loss"][0]
    assert rec["best_accuracy"] > 0.6
    assert rec["params"] == M.count_params(spec.model_config())


@pytest.mark.parametrize("eval_every, transfer, curve", [(2, 50, [0, 2, 3]), (5, 2, [0, 3])])
def test_a_diverging_run_is_recorded_not_raised(monkeypatch, eval_every, transfer, curve):
    """The losses come back at the evaluations only; the divergence is still placed at its step."""
    monkeypatch.setattr(mqar, "TRANSFER_STEPS", transfer)
    grid = replace(mqar.GRIDS["quick"], eval_every=eval_every, test_size=8)
    spec = mqar.RunSpec("mqar", "softmax", 8, 16, 2, 16, 0, 1, 1, steps=6, batch=4, lr=1e-2, seed=0)
    real = M.Model.loss_and_grads
    calls = []

    def blow_up_at_step_3(self, P, *args, **kw):
        metrics, G = real(self, P, *args, **kw)
        calls.append(1)
        return (M.Metrics(float("nan"), 0.0, metrics.queries) if len(calls) == 3 else metrics), G
    monkeypatch.setattr(M.Model, "loss_and_grads", blow_up_at_step_3)
    rec = mqar.train(spec, grid)
    assert rec["diverged_at"] == 3 and rec["steps_run"] == 3 and rec["final_accuracy"] == 0.0
    assert rec["curve"]["step"] == curve and rec["curve"]["test_accuracy"][-1] == 0.0


def _test_grid():
    return mqar.Grid("test", mixers=("softmax", "zeros2"), widths=(8,), lengths=((16, (2,)),), vocab=16, steps=3,
                     batch=4, lr=1e-2, eval_every=2, test_size=8, diff_widths=(8,), diff_length=16, diff_kv=2,
                     diff_values=3, diff_steps=2)


def test_sweep_writes_results_and_resumes(tmp_path, monkeypatch):
    g = _test_grid()
    res = mqar.run(out=str(tmp_path), grid=g, progress_bar=False)
    path = tmp_path / "mqar_test.json"
    assert str(path) in res["files"] and all((tmp_path / f).exists() for f in
                                             ("mqar_test_accuracy.png", "mqar_test_curves.png"))
    doc = json.loads(path.read_text())
    assert len(doc["runs"]) == 4 == len(g.runs(0))
    assert {r["spec"]["task"] for r in doc["runs"].values()} == {"mqar", "difference"}
    assert all(r["steps_run"] in (2, 3) for r in doc["runs"].values())
    assert "T=16 kv=2" in mqar.summary(res)

    def no_training(*a, **k):
        raise AssertionError("a run already in the file was trained again")
    monkeypatch.setattr(mqar, "train", no_training)
    again = mqar.run(out=str(tmp_path), grid=g, progress_bar=False, plots=False)
    assert again["runs"] == res["runs"]
    # a new run (another seed) is trained and added; the old ones stay
    monkeypatch.undo()
    mqar.run(out=str(tmp_path), grid=replace(g, mixers=("softmax",)), seed=1, progress_bar=False, plots=False)
    assert len(json.loads(path.read_text())["runs"]) == 6


def _same_runs(a, b):
    """The records of two sweeps agree in everything but their timing."""
    assert set(a) == set(b)
    for k in a:
        assert {f: v for f, v in a[k].items() if f != "seconds"} == {f: v for f, v in b[k].items() if f != "seconds"}


def test_sweep_in_two_worker_processes_matches_one(tmp_path):
    """--jobs 2: the runs train in two spawned workers (after their warm-up), each writes its own file, the
    main process merges them into the one results file and removes them; the records are those of one
    process, run for run."""
    g = replace(_test_grid(), steps=4)
    one = mqar.run(out=str(tmp_path / "one"), grid=g, progress_bar=False, plots=False)
    two = mqar.run(out=str(tmp_path / "two"), grid=g, progress_bar=False, plots=False, jobs=2)
    assert two["jobs"] == 2 and len(two["runs"]) == len(g.runs(0)) == 4
    _same_runs(one["runs"], two["runs"])
    _same_runs(json.loads((tmp_path / "two" / "mqar_test.json").read_text())["runs"], one["runs"])
    assert not (tmp_path / "two" / "mqar_test.runs").exists()
    assert not (tmp_path / "two" / "mqar_test.json.lock").exists()


def test_per_run_files_left_by_a_killed_sweep_are_merged(tmp_path, monkeypatch):
    """A run whose own file was written but never merged (the main process died) is not trained again."""
    g = _test_grid()
    path = tmp_path / "mqar_test.json"
    specs = g.runs(0)
    out = mqar.run_job(mqar.Job(specs[1], g, "numpy", str(tmp_path / "mqar_test.runs")))
    assert out.record is not None and len(list((tmp_path / "mqar_test.runs").iterdir())) == 1
    trained = []
    real = mqar.train

    def counting(spec, *a, **k):
        trained.append(spec)
        return real(spec, *a, **k)
    monkeypatch.setattr(mqar, "train", counting)
    res = mqar.run(out=str(tmp_path), grid=g, progress_bar=False, plots=False)
    assert len(res["runs"]) == 4 and specs[1] not in trained and len(trained) == 3
    assert res["runs"][specs[1].key] == out.record
    assert len(json.loads(path.read_text())["runs"]) == 4 and not (tmp_path / "mqar_test.runs").exists()


def test_time_limit_stops_the_sweep_and_a_rerun_continues(tmp_path, monkeypatch):
    """Under --time-limit the run in flight at the deadline stops (not recorded), later ones do not start,
    the call returns with what finished and says so; the same call again trains only the missing runs."""
    monkeypatch.setattr(mqar, "FINISH_RESERVE", 0.0)
    g = replace(_test_grid(), mixers=("softmax", "linear-identity"), core_mixers=("softmax",), diff_widths=(),
                steps=5000, eval_every=5000)
    quick_spec, long_spec = g.runs(0)               # softmax (a core mixer: it goes first), linear-identity
    quick_spec = replace(quick_spec, steps=2)       # done long before the deadline; the other would take minutes
    specs = [long_spec, quick_spec]
    monkeypatch.setattr(mqar.Grid, "runs", lambda self, seed: list(specs))
    res = mqar.run(out=str(tmp_path), grid=g, progress_bar=False, plots=False, time_limit=3.0)
    assert list(res["runs"]) == [quick_spec.key] and res["stopped_at_time_limit"] == 1
    assert "INCOMPLETE: 1 of 2 runs" in mqar.summary(res)
    trained = []
    monkeypatch.setattr(mqar, "train", lambda spec, *a, **k: trained.append(spec) or (_ for _ in ()).throw(
        mqar.OutOfTime("simulated")))
    again = mqar.run(out=str(tmp_path), grid=g, progress_bar=False, plots=False, time_limit=3.0)
    assert trained == [long_spec] and list(again["runs"]) == [quick_spec.key]


def test_a_past_deadline_stops_a_run_and_nothing_finished_is_an_error(tmp_path):
    g = _test_grid()
    with pytest.raises(mqar.OutOfTime, match="deadline"):
        mqar.train(g.runs(0)[0], g, deadline=time.time() - 1)
    with pytest.raises(ValueError, match="time_limit must exceed"):
        mqar.run(out=str(tmp_path), grid=g, progress_bar=False, time_limit=mqar.FINISH_RESERVE)
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        mqar.run(out=str(tmp_path), grid=g, progress_bar=False, jobs=0)


def test_a_second_sweep_on_the_same_file_is_refused(tmp_path):
    g = _test_grid()
    lock = tmp_path / "mqar_test.json.lock"
    lock.write_text(str(os.getpid()))                       # a live owner
    with pytest.raises(RuntimeError, match="another sweep"):
        mqar.run(out=str(tmp_path), grid=g, progress_bar=False, plots=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock.write_text(dead.stdout.strip())                    # a stale one: taken over
    assert len(mqar.run(out=str(tmp_path), grid=g, progress_bar=False, plots=False)["runs"]) == 4
    assert not lock.exists()


def test_a_failing_run_is_reported_and_the_others_are_kept(tmp_path, fail_when):
    g = _test_grid()
    fail_when(mqar, "train", lambda spec: spec.mixer == "zeros2", FloatingPointError("boom"))
    with pytest.raises(RuntimeError, match="2 run\\(s\\) failed.*boom"):
        mqar.run(out=str(tmp_path), grid=g, progress_bar=False, plots=False)
    kept = json.loads((tmp_path / "mqar_test.json").read_text())["runs"]
    assert {r["spec"]["mixer"] for r in kept.values()} == {"softmax"} and len(kept) == 2


def test_device_batches_are_the_one_at_a_time_draws():
    task = MQAR(vocab=32, seq_len=32, kv_pairs=4)
    got = mqar._device_batches(task, np.random.default_rng(5), 3, 4, np)
    rng = np.random.default_rng(5)
    for b in got:
        ref = task.batch(rng, 3)
        flat = ref.labels.ravel()
        assert np.array_equal(b.tokens, ref.tokens)
        assert np.array_equal(b.sel, np.nonzero(flat >= 0)[0]) and np.array_equal(b.y, flat[flat >= 0])
        assert b.queries == 12


def test_order_runs_core_mixers_first_then_longest_first():
    g = mqar.GRIDS["gpu"]
    order = mqar.order_runs(g.runs(0), g)
    core = [s.task == "mqar" and s.mixer in g.core_mixers for s in order]
    assert core == sorted(core, reverse=True) and sum(core) == 72          # the minimum grid first
    costs = [mqar.gpu_cost(s, g).alone for s, c in zip(order, core) if c]
    assert costs == sorted(costs, reverse=True)
    phases = mqar.warm_phases(order)
    assert sorted(s.mixer for s in phases[0]) == sorted(g.mixers)
    cells = {(s.task, s.mixer, s.seq_len, s.width // s.heads) for s in order}
    assert len(phases[0]) + len(phases[1]) == len(cells)


def test_cli_runs_the_quick_grid(tmp_path, monkeypatch):
    from click.testing import CliRunner
    import cli
    monkeypatch.setitem(mqar.GRIDS, "quick", replace(_test_grid(), name="quick"))
    r = CliRunner().invoke(cli.main, ["experiment", "mqar", "--quick", "--quiet", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "smallest width reaching 90%" in r.output and (tmp_path / "mqar_quick.json").exists()
    r = CliRunner().invoke(cli.main, ["experiment", "mqar", "--quick", "--quiet", "--out", str(tmp_path / "j"),
                                      "--jobs", "2", "--time-limit", "300"])
    assert r.exit_code == 0, r.output
    assert "with 2 job(s)" in r.output and "INCOMPLETE" not in r.output
    for bad in (["sparsity", "--jobs", "2"], ["all", "--time-limit", "60"], ["mqar", "--jobs", "0"]):
        r = CliRunner().invoke(cli.main, ["experiment", *bad, "--quick", "--out", str(tmp_path / "x")])
        assert r.exit_code == 2, (bad, r.output)
    r = CliRunner().invoke(cli.main, ["experiment", "mqar", "--quick", "--quiet", "--out", str(tmp_path / "y"),
                                      "--time-limit", "5"])
    assert r.exit_code == 1 and "time_limit must exceed" in r.output


def test_markdown_tables():
    """README's tables from a results file: accuracies per width, the smallest width reaching 90% ("none"
    when no width did, "-" for a mixer with no run in that cell), cells ordered by (T, pairs)."""
    def rec(mixer, w, T, kv, acc, task="mqar"):
        return dict(spec=dict(task=task, mixer=mixer, width=w, seq_len=T, kv_pairs=kv), final_accuracy=acc,
                    steps_run=10, seconds=1.0)
    runs = [rec("softmax", 64, 128, 8, 0.95), rec("softmax", 32, 128, 8, 0.5), rec("zeros2", 32, 128, 8, 0.2),
            rec("zeros2", 64, 128, 8, 0.89), rec("softmax", 32, 64, 4, 0.91), rec("softmax", 64, 64, 4, 1.0),
            rec("zeros2", 64, 64, 4, 0.97), rec("softmax", 64, 64, 4, 0.5, task="difference")]
    res = dict(runs={str(i): r for i, r in enumerate(runs)})
    res["tables"] = mqar.tables(res)
    md = mqar.markdown(res).splitlines()
    assert md[0] == "Final held-out accuracy at widths 32 / 64:"
    assert md[2] == "| mixer | T=64, 4 pairs | T=128, 8 pairs |"
    assert "| softmax | 0.91 / 1.00 | 0.50 / 0.95 |" in md and "| ZeroS, 2 gates | - / 0.97 | 0.20 / 0.89 |" in md
    i = md.index('Smallest width that reaches 90% accuracy ("none": none of 32, 64):')
    assert md[i + 4:i + 6] == ["| softmax | 32 | 64 |", "| ZeroS, 2 gates | 64 | none |"]
    assert md[-1] == "Difference recall (width 64): softmax 0.500."


def test_readme_shows_the_committed_cpu_tables():
    """The cpu grid's tables in README are what scripts/mqar_table.py prints from the committed results."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "scripts", "mqar_table.py"),
                          os.path.join(root, "results", "experiments", "mqar_cpu.json")],
                         capture_output=True, text=True, check=True).stdout
    readme = open(os.path.join(root, "README.md")).read()
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 14 and all(line in readme for line in rows)
    bad = subprocess.run([sys.executable, os.path.join(root, "scripts", "mqar_table.py"), "/nonexistent.json"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "cannot read" in bad.stderr


def test_grids():
    gpu = mqar.GRIDS["gpu"]
    assert len(gpu.mixers) >= 4 and len(gpu.widths) >= 3 and len(gpu.lengths) >= 3
    assert all(len(kvs) >= 2 for _, kvs in gpu.lengths)
    for g in mqar.GRIDS.values():
        for s in g.runs(0):
            s.make_task()                                   # every cell is a valid task
            assert s.width // s.heads <= 128                # head widths every CuPy kernel takes
    assert mqar.grid_for(True, "cupy").name == "quick"
    assert mqar.grid_for(False, "numpy:explicit").name == "cpu"
    assert mqar.grid_for(False, "cupy:flash").name == "gpu"


def test_step_cost_counts_the_matrix_products():
    s = mqar.RunSpec("mqar", "linear-elu1", 32, 64, 4, 64, 0, 1, 2, steps=10, batch=8, lr=1e-3, seed=0)
    c = mqar.step_cost(s)
    per_token = 2 * 32 * 32 * (4 + 2 * 2)
    assert c["matmul_flops"] == 3 * (2 * per_token * 8 * 64 + 2 * 32 * 64 * 8 * 4)
    assert c["op_flops"] == 2 * 8 * 64 * 7 * 2 * 32 * 32          # one 32 x 32 state, 7 MACs per entry
    cost = mqar.gpu_cost(s, mqar.GRIDS["cpu"])
    assert cost.host > 10 * mqar.GPU_RATES["host_step"] and cost.device > 10 * mqar.GPU_RATES["device_step"]


def test_gpu_estimate_with_jobs():
    """One job: the runs one after the other; several: the device total or the host total shared by the jobs
    (whichever is larger), never less than the longest run; both plus the start and the compilation."""
    g, rates = mqar.GRIDS["gpu"], mqar.GPU_RATES
    costs = [mqar.gpu_cost(s, g) for s in g.runs(0)]
    fixed = rates["compile"] + rates["start"]
    one = mqar.gpu_estimate(g, jobs=1)
    assert one["seconds"] == pytest.approx(fixed + sum(c.alone for c in costs))
    for jobs in (2, 8, 64):
        e = mqar.gpu_estimate(g, jobs=jobs)
        host = sum(c.host for c in costs) / min(jobs, rates["cores"])
        assert e["seconds"] == pytest.approx(fixed + max(host, sum(c.device for c in costs),
                                                         max(c.alone for c in costs)))
        assert e["seconds"] < one["seconds"]
    few = g.runs(0)[:3]
    assert mqar.gpu_estimate(g, jobs=8, runs=few)["runs"] == 3


# ============================================================================ GPU
@pytest.mark.gpu
@pytest.mark.parametrize("mixer", list(M.MIXERS))
def test_cupy_model_matches_numpy(mixer):
    """The same model, batch and weights on the CuPy kernels and on the NumPy references (float32)."""
    from workbench import backends
    cp = backends.cupy_module()
    if cp is None:
        pytest.skip("needs CuPy and a GPU")
    cfg = M.ModelConfig(mixer=mixer, vocab=32, width=64, heads=1)
    batch = MQAR(vocab=32, seq_len=64, kv_pairs=8).batch(np.random.default_rng(0), 4)
    P = M.init_params(cfg, 0)
    Pg = M.init_params(cfg, 0, xp=cp)
    m_cpu, G = M.Model(cfg, "numpy").loss_and_grads(P, batch.tokens, batch.labels)
    m_gpu, Gg = M.Model(cfg, "cupy").loss_and_grads(Pg, batch.tokens, batch.labels)
    assert m_gpu.loss == pytest.approx(m_cpu.loss, rel=1e-4)
    for k in G:
        g = cp.asnumpy(Gg[k])
        assert np.linalg.norm(g - G[k]) <= 1e-3 * np.linalg.norm(G[k]) + 1e-7, k
