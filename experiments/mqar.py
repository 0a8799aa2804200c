"""Does each attention recall?  Small models trained on multi-query associative recall (MQAR, the Zoology
paper's task) and on a contrastive variant, with the workbench's own gradients.

For every run (``RunSpec``): a two-block model (``experiments.model``) whose attention is one of the mixers
(softmax; linear elu1 normalised; linear identity; decayed; ZeroS with 2 and 3 gates) is trained from a seed by
AdamW for a fixed number of steps on fresh batches (``experiments.recall_tasks``), its accuracy on a fixed
held-out set measured every ``eval_every`` steps; a run stops early once that accuracy reaches ``stop_at``.
The sweep is mixer x width x sequence length x key-value pairs (MQAR) plus mixer x width on the difference
task, which asks for ``m_a - m_b`` of two recalled numbers (a signed contrast of two values, what a
zero-sum ZeroS row can read out in one step).

Three grids (``GRIDS``): ``quick`` (``--quick``; seconds per run, a couple of minutes on two cores), ``cpu``
(the default with the NumPy backend: about an hour on a shared two-core machine)
and ``gpu`` (the default with a GPU backend: 6 mixers x 3 widths x 3 lengths x 2 key-value counts, designed
for under 25 minutes on one H100/H200, ``gpu_estimate``).  Results go to ``OUT/mqar_<grid>.json``, written
after every run; a run already in that file (same ``RunSpec``) is skipped, so an interrupted sweep resumes.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass

import numpy as np

from ._common import DEFAULT_OUT, progress, pyplot, save_fig, table, write_json
from .model import MIXERS, AdamW, Model, ModelConfig, count_params, init_params
from .recall_tasks import MQAR, DifferenceRecall

NAME = "mqar"
ACCURACY_GOAL = 0.9          # "solved" in the summary: the smallest width reaching this accuracy


# ============================================================================= runs and grids
@dataclass(frozen=True)
class RunSpec:
    """Everything that defines one training run (its key in the results file)."""
    task: str               # "mqar" or "difference"
    mixer: str
    width: int
    seq_len: int
    kv_pairs: int
    vocab: int              # MQAR: vocabulary; difference: number of key tokens
    values: int             # difference: numbers a value can be (0 for MQAR)
    heads: int
    layers: int
    steps: int
    batch: int
    lr: float
    seed: int

    @property
    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def make_task(self):
        if self.task == "mqar":
            return MQAR(vocab=self.vocab, seq_len=self.seq_len, kv_pairs=self.kv_pairs)
        if self.task == "difference":
            return DifferenceRecall(keys=self.vocab, values=self.values, seq_len=self.seq_len,
                                    kv_pairs=self.kv_pairs)
        raise ValueError(f"unknown task {self.task!r}")

    def model_config(self) -> ModelConfig:
        return ModelConfig(mixer=self.mixer, vocab=self.make_task().model_vocab, width=self.width,
                           layers=self.layers, heads=self.heads)


@dataclass(frozen=True)
class Grid:
    """A sweep: MQAR over mixers x widths x (sequence length, key-value pairs), and the difference task
    over mixers x widths at one length.  ``head_width``: heads = max(1, width // head_width)."""
    name: str
    mixers: tuple
    widths: tuple
    lengths: tuple                  # ((T, (kv, kv, ...)), ...)
    vocab: int
    steps: int
    batch: int
    lr: float
    eval_every: int
    test_size: int
    diff_widths: tuple
    diff_length: int
    diff_kv: int
    diff_values: int
    diff_steps: int
    layers: int = 2
    head_width: int = 64
    lr_width: int = 64
    stop_at: float = 0.995

    def heads(self, width: int) -> int:
        return max(1, width // self.head_width)

    def lr_for(self, width: int) -> float:
        """``lr`` up to ``lr_width``, then ``lr * lr_width / width`` (Adam's step on a hidden matrix moves its
        output by ~ lr * width, so wider models take proportionally smaller steps)."""
        return self.lr * min(1.0, self.lr_width / width)

    def runs(self, seed: int) -> list:
        out = []
        common = dict(layers=self.layers, batch=self.batch, seed=seed)
        for T, kvs in self.lengths:
            for kv in kvs:
                for w in self.widths:
                    for m in self.mixers:
                        out.append(RunSpec("mqar", m, w, T, kv, self.vocab, 0, self.heads(w), steps=self.steps,
                                           lr=self.lr_for(w), **common))
        for w in self.diff_widths:
            for m in self.mixers:
                out.append(RunSpec("difference", m, w, self.diff_length, self.diff_kv, self.vocab // 2,
                                   self.diff_values, self.heads(w), steps=self.diff_steps, lr=self.lr_for(w),
                                   **common))
        return out


ALL_MIXERS = tuple(MIXERS)
GRIDS = {
    "quick": Grid("quick", mixers=("softmax", "linear-elu1", "zeros2"), widths=(16, 32), lengths=((64, (8,)),),
                  vocab=64, steps=300, batch=32, lr=1e-2, eval_every=50, test_size=256,
                  diff_widths=(), diff_length=32, diff_kv=4, diff_values=4, diff_steps=0),
    "cpu": Grid("cpu", mixers=ALL_MIXERS, widths=(16, 32, 64), lengths=((64, (8, 16)), (128, (16,))),
                vocab=64, steps=600, batch=32, lr=1e-2, eval_every=50, test_size=256,
                diff_widths=(32,), diff_length=32, diff_kv=4, diff_values=4, diff_steps=1500),
    "gpu": Grid("gpu", mixers=ALL_MIXERS, widths=(64, 128, 256), lengths=((64, (4, 16)), (128, (8, 32)),
                                                                         (256, (16, 64))),
                vocab=256, steps=1000, batch=64, lr=1e-2, eval_every=100, test_size=512,
                diff_widths=(128,), diff_length=64, diff_kv=8, diff_values=8, diff_steps=1000),
}


def grid_for(quick: bool, backend: str) -> Grid:
    """``quick`` with --quick; else ``cpu`` on the NumPy backend and ``gpu`` on a GPU backend."""
    if quick:
        return GRIDS["quick"]
    return GRIDS["cpu" if backend.split(":", 1)[0] == "numpy" else "gpu"]


# ============================================================================= training
def _array_module(backend: str):
    if backend.split(":", 1)[0] == "cupy":
        import cupy
        return cupy
    return np


def _blas_single_thread(backend: str):
    """Small matrices train faster on one BLAS thread (and leave the other cores to others)."""
    if backend.split(":", 1)[0] != "numpy":
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1)


def train(spec: RunSpec, grid: Grid, backend: str = "numpy", on_step=None) -> dict:
    """Train one run; returns its record: settings, curves (step, train loss averaged since the previous
    evaluation, held-out loss and accuracy; step 0 is the initial model), final and best accuracy, steps
    run, seconds.  A non-finite training loss ends the run with ``diverged_at`` set and accuracy 0.

    Deterministic: the weights come from ``spec.seed``, the training batches from ``[seed, 1]`` and the
    held-out set from ``[seed, 2]`` (so every mixer sees the same data)."""
    task = spec.make_task()
    cfg = spec.model_config()
    xp = _array_module(backend)
    params = init_params(cfg, spec.seed, np.float32, xp)
    model = Model(cfg, backend)
    opt = AdamW(lr=spec.lr, steps=spec.steps, warmup=max(1, spec.steps // 10))
    data = np.random.default_rng([spec.seed, 1])
    test = task.batch(np.random.default_rng([spec.seed, 2]), grid.test_size)
    curve = dict(step=[], train_loss=[], test_loss=[], test_accuracy=[])
    window, t0, step, diverged = [], time.time(), 0, None

    def evaluate():
        parts = [model.evaluate(params, test.tokens[i:i + spec.batch], test.labels[i:i + spec.batch])
                 for i in range(0, grid.test_size, spec.batch)]
        n = sum(p.queries for p in parts)
        return (sum(p.loss * p.queries for p in parts) / n, sum(p.accuracy * p.queries for p in parts) / n)

    def record(step, train_loss):
        loss, acc = evaluate()
        for k, v in zip(curve, (step, train_loss, loss, acc)):
            curve[k].append(v)
        return acc

    with _blas_single_thread(backend):
        record(0, None)
        for step in range(1, spec.steps + 1):
            b = task.batch(data, spec.batch)
            metrics, grads = model.loss_and_grads(params, b.tokens, b.labels)
            if not math.isfinite(metrics.loss):       # recorded, not raised: a resumed sweep would hit it again
                diverged = step
                for k, v in zip(curve, (step, None, None, 0.0)):
                    curve[k].append(v)
                break
            opt.step(params, grads)
            window.append(metrics.loss)
            if on_step:
                on_step()
            if step % grid.eval_every == 0 or step == spec.steps:
                acc = record(step, float(np.mean(window)))
                window = []
                if acc >= grid.stop_at:
                    break
    return dict(spec=asdict(spec), params=count_params(cfg), backend=backend, steps_run=step,
                seconds=time.time() - t0, final_accuracy=curve["test_accuracy"][-1],
                best_accuracy=max(curve["test_accuracy"]), final_test_loss=curve["test_loss"][-1],
                stopped_early=step < spec.steps, diverged_at=diverged, curve=curve)


# ============================================================================= the GPU budget
# Sustained rates assumed for one H100/H200 in float32 (the README's H100 measurements: fwd+bwd of the
# CuPy kernels at D = 64 -- softmax 14 TFLOP/s at T = 1024, linear 5, ZeroS 2.3 -- derated for the shorter
# sequences here), cuBLAS float32 GEMMs, elementwise traffic, and a fixed cost per step for the ~300
# kernel launches and the Python around them.
GPU_RATES = dict(matmul=25e12, softmax=8e12, linear=3e12, decayed=3e12, zeros=1.2e12, bandwidth=2.0e12,
                 step_overhead=6e-3, compile=90.0)
ELEMENTWISE_PASSES = 60      # reads + writes of a (B, T, D) float32 array per block and step (fwd + bwd)


def step_cost(spec: RunSpec) -> dict:
    """FLOPs and bytes of one training step (forward + backward): the model's matrix products, the op
    (``workbench.bench.costs``, linear-time forms for the linear ops), and the elementwise traffic."""
    from workbench.bench import costs
    task = spec.make_task()
    D, T, B, L, H = spec.width, spec.seq_len, spec.batch, spec.layers, spec.heads
    mlp = ModelConfig.__dataclass_fields__["mlp_ratio"].default
    per_token = 2 * D * D * (4 + 2 * mlp)                              # q, k, v, o and the MLP, forward
    matmul = 3 * (L * per_token * B * T + 2 * D * task.model_vocab * B * task.queries())
    mx = MIXERS[spec.mixer]
    form = "quadratic" if mx.op == "softmax" else "linear"
    shape = costs.Shape(N=B * H, T=T, Dk=D // H, Dv=D // H, n_gates=max(2, mx.gates))
    op = L * costs.flops(mx.op, form, shape, True, "fwdbwd")
    nbytes = L * ELEMENTWISE_PASSES * B * T * D * 4
    return dict(matmul_flops=matmul, op_flops=op, bytes=nbytes)


def gpu_seconds(spec: RunSpec, grid: Grid, rates=GPU_RATES) -> float:
    """Estimated seconds of a run that goes its whole step budget (no early stop) on one H100/H200: the
    training steps plus the held-out evaluations (a forward pass costs about a third of a step)."""
    c = step_cost(spec)
    op = MIXERS[spec.mixer].op
    per_step = (c["matmul_flops"] / rates["matmul"] + c["op_flops"] / rates[op] + c["bytes"] / rates["bandwidth"]
                + rates["step_overhead"])
    evals = (spec.steps // grid.eval_every + 2) * math.ceil(grid.test_size / spec.batch)
    return (spec.steps + evals / 3) * per_step


def gpu_estimate(grid: Grid, seed: int = 0) -> dict:
    """Estimated GPU time of a whole grid, every run to its full step budget (the bound; early stops
    only shorten it), plus ``rates["compile"]`` for the kernels' first compilation."""
    runs = grid.runs(seed)
    secs = [gpu_seconds(r, grid) for r in runs]
    total = float(sum(secs)) + GPU_RATES["compile"]
    return dict(runs=len(runs), seconds=total, minutes=total / 60, longest_run_seconds=float(max(secs)),
                rates=GPU_RATES)


# ============================================================================= the sweep
def _results_path(out: str, grid: Grid) -> str:
    return os.path.join(out, f"{NAME}_{grid.name}.json")


def _load(path: str) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f).get("runs", {})


def _save(path: str, doc: dict) -> None:
    tmp = path + ".tmp"
    write_json(tmp, doc)
    os.replace(tmp, path)


def run(out=DEFAULT_OUT, quick=False, backend="numpy", seed=0, progress_bar=True, plots=True, grid=None):
    grid = grid or grid_for(quick, backend)
    os.makedirs(out, exist_ok=True)
    path = _results_path(out, grid)
    done = _load(path)
    specs = grid.runs(seed)
    todo = [s for s in specs if s.key not in done]
    doc = dict(experiment=NAME, grid=grid.name, settings=asdict(grid), method=__doc__.strip().split("\n\n")[0],
               gpu_estimate=gpu_estimate(grid, seed), runs=done)
    bar = progress(range(sum(s.steps for s in todo)), f"mqar ({grid.name}, {len(todo)} runs to do, "
                   f"{len(specs) - len(todo)} in the file)", progress_bar, total=sum(s.steps for s in todo))
    with bar:
        for s in todo:
            bar.set_postfix_str(f"{s.task} {s.mixer} D={s.width} T={s.seq_len} kv={s.kv_pairs}")
            rec = train(s, grid, backend, on_step=lambda: bar.update(1))
            bar.update(s.steps - rec["steps_run"])
            done[s.key] = rec
            _save(path, doc)
    res = dict(doc, runs={k: done[k] for k in (s.key for s in specs)}, quick=quick, backend=backend, seed=seed)
    res["tables"] = tables(res)
    files = [path]
    if plots:
        files += _plot(res, grid, os.path.join(out, f"{NAME}_{grid.name}"))
    res["files"] = files
    return res


# ============================================================================= tables
def _mqar_runs(res):
    return [r for r in res["runs"].values() if r["spec"]["task"] == "mqar"]


def tables(res) -> dict:
    """Final accuracy per (T, kv, mixer, width); per mixer and (T, kv), the smallest width whose final
    accuracy reaches ``ACCURACY_GOAL`` (None: no width did); the difference task per (mixer, width)."""
    acc, smallest, diff = {}, {}, {}
    for r in _mqar_runs(res):
        s = r["spec"]
        acc.setdefault(f"T={s['seq_len']} kv={s['kv_pairs']}", {}).setdefault(s["mixer"], {})[s["width"]] = \
            r["final_accuracy"]
    for cell, by_mixer in acc.items():
        for m, by_w in by_mixer.items():
            ok = [w for w, a in sorted(by_w.items()) if a >= ACCURACY_GOAL]
            smallest.setdefault(cell, {})[m] = ok[0] if ok else None
    for r in res["runs"].values():
        s = r["spec"]
        if s["task"] == "difference":
            diff.setdefault(s["mixer"], {})[s["width"]] = r["final_accuracy"]
    runs = list(res["runs"].values())
    steps = sum(r["steps_run"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    timing = dict(seconds=seconds, steps=steps, seconds_per_step=seconds / max(1, steps))
    return dict(accuracy=acc, smallest_width=smallest, difference=diff, timing=timing)


def summary(res) -> str:
    t = res["tables"]
    mixers = [m for m in MIXERS if any(m in v for v in t["accuracy"].values())]
    widths = sorted({w for v in t["accuracy"].values() for bm in v.values() for w in bm})
    lines = [f"grid {res['grid']}: {len(res['runs'])} runs; final held-out accuracy (MQAR)"]
    for cell, by_mixer in t["accuracy"].items():
        rows = [[MIXERS[m].label] + [by_mixer.get(m, {}).get(w) for w in widths] for m in mixers]
        lines += ["", cell, table(rows, ["mixer"] + [f"D={w}" for w in widths])]
    cells = list(t["smallest_width"])
    rows = [[MIXERS[m].label] + [t["smallest_width"][c].get(m) or "-" for c in cells] for m in mixers]
    lines += ["", f"smallest width reaching {ACCURACY_GOAL:.0%} accuracy ('-': none of {widths})",
              table(rows, ["mixer"] + cells)]
    if t["difference"]:
        dw = sorted({w for v in t["difference"].values() for w in v})
        rows = [[MIXERS[m].label] + [t["difference"].get(m, {}).get(w) for w in dw] for m in mixers
                if m in t["difference"]]
        lines += ["", "difference recall (answer m_a - m_b): final held-out accuracy",
                  table(rows, ["mixer"] + [f"D={w}" for w in dw])]
    est, tm = res["gpu_estimate"], t["timing"]
    lines += ["", f"measured here ({res['backend']}): {tm['seconds'] / 60:.1f} min for {tm['steps']} training steps, "
              f"{1e3 * tm['seconds_per_step']:.1f} ms a step with its share of evaluations; GPU estimate of the "
              f"whole grid, every run to its full budget: {est['minutes']:.1f} min"]
    return "\n".join(lines)


# ============================================================================= plots
def _plot(res, grid: Grid, stem: str) -> list:
    plt = pyplot()
    files = []
    runs = _mqar_runs(res)
    mixers = [m for m in grid.mixers]
    colors = {m: f"C{i}" for i, m in enumerate(MIXERS)}
    kv_rows = max(len(kvs) for _, kvs in grid.lengths)
    fig, axes = plt.subplots(kv_rows, len(grid.lengths), figsize=(4.6 * len(grid.lengths), 3.6 * kv_rows),
                             squeeze=False, sharey=True)
    for j, (T, kvs) in enumerate(grid.lengths):
        for i in range(kv_rows):
            ax = axes[i][j]
            if i >= len(kvs):
                ax.axis("off")
                continue
            for m in mixers:
                pts = sorted((r["spec"]["width"], r["final_accuracy"]) for r in runs
                             if r["spec"]["mixer"] == m and r["spec"]["seq_len"] == T
                             and r["spec"]["kv_pairs"] == kvs[i])
                if pts:
                    ax.plot(*zip(*pts), "o-", color=colors[m], label=MIXERS[m].label)
            ax.set_xscale("log", base=2)
            ax.set_xticks(grid.widths, [str(w) for w in grid.widths])
            ax.set(title=f"T = {T}, {kvs[i]} key-value pairs", xlabel="model width", ylim=(-0.03, 1.03))
            ax.axhline(ACCURACY_GOAL, color="k", lw=0.6, ls=":")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("held-out accuracy")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"MQAR accuracy against model width ({grid.name} grid: {grid.layers} blocks, "
                 f"{grid.steps} steps max, batch {grid.batch})", fontsize=12)
    fig.tight_layout()
    files.append(save_fig(fig, f"{stem}_accuracy.png"))

    # training curves: the hardest cell of each length (and the difference task) at every width
    cells = [(T, max(kvs), "mqar", grid.widths) for T, kvs in grid.lengths]
    if grid.diff_widths:
        cells.append((grid.diff_length, grid.diff_kv, "difference", grid.diff_widths))
    widths = sorted(set(grid.widths) | set(grid.diff_widths))
    fig, axes = plt.subplots(len(widths), len(cells), figsize=(4.2 * len(cells), 3.0 * len(widths)),
                             squeeze=False, sharey=True)
    for i, w in enumerate(widths):
        for j, (T, kv, task, task_widths) in enumerate(cells):
            ax = axes[i][j]
            if w not in task_widths:
                ax.axis("off")
                continue
            for m in mixers:
                for r in res["runs"].values():
                    s = r["spec"]
                    if (s["task"], s["mixer"], s["width"], s["seq_len"], s["kv_pairs"]) == (task, m, w, T, kv):
                        ax.plot(r["curve"]["step"], r["curve"]["test_accuracy"], color=colors[m],
                                label=MIXERS[m].label)
            name = "MQAR" if task == "mqar" else "difference recall"
            ax.set(title=f"{name}, D = {w}, T = {T}, kv = {kv}", ylim=(-0.03, 1.03), xlabel="training step")
            ax.grid(alpha=0.3)
            if j == 0:
                ax.set_ylabel("held-out accuracy")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    files.append(save_fig(fig, f"{stem}_curves.png"))
    return files
