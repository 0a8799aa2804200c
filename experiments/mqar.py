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
for about 5 minutes on one H100/H200 with ``jobs=8``, ``gpu_estimate``).  Results go to
``OUT/mqar_<grid>.json``; a run already in that file (same ``RunSpec``) is skipped, so an interrupted sweep
resumes.  ``jobs`` trains that many runs at once in worker processes (each run first lands in its own file,
merged by the main process); ``time_limit`` stops the sweep in time (see ``run``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, replace
from typing import Optional

import numpy as np

from ._common import DEFAULT_OUT, progress, pyplot, save_fig, table, write_json
from workbench import backends

from .model import MIXERS, AdamW, Model, ModelBatch, ModelConfig, count_params, init_params
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
    layers: int = ModelConfig.layers       # the model's default depth
    head_width: int = 64
    lr_width: int = 64
    stop_at: float = 0.995
    core_mixers: tuple = ("softmax", "linear-elu1", "decayed", "zeros2")     # one per op: these runs go first

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
                vocab=256, steps=600, batch=32, lr=1e-2, eval_every=50, test_size=256,
                diff_widths=(128,), diff_length=64, diff_kv=8, diff_values=8, diff_steps=600),
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


class OutOfTime(Exception):
    """A run reached the sweep's deadline before its end; it is not recorded (a resumed sweep runs it again)."""


def _device_batches(task, rng, batch: int, count: int, xp) -> list:
    """The next ``count`` training batches as ``ModelBatch``es on ``xp``: drawn on the host one by one (the
    same draws as one at a time) and moved in one transfer per array, not one per step."""
    drawn = [task.batch(rng, batch) for _ in range(count)]
    prepared = [Model.prepare(b.tokens, b.labels) for b in drawn]
    tokens = xp.asarray(np.stack([p.tokens for p in prepared]))
    sel = xp.asarray(np.concatenate([p.sel for p in prepared]))
    y = xp.asarray(np.concatenate([p.y for p in prepared]))
    out, start = [], 0
    for i, p in enumerate(prepared):
        out.append(ModelBatch(tokens[i], sel[start:start + p.queries], y[start:start + p.queries], p.queries))
        start += p.queries
    return out


EVAL_BATCH = 256     # held-out sequences per forward pass
TRANSFER_STEPS = 50  # training batches moved to the device at once (at most; an evaluation ends a transfer)


def train(spec: RunSpec, grid: Grid, backend: str = "numpy", on_step=None, deadline=None) -> dict:
    """Train one run; returns its record: settings, curves (step, train loss averaged since the previous
    evaluation, held-out loss and accuracy; step 0 is the initial model), final and best accuracy, steps
    run, seconds.  A non-finite training loss ends the run with ``diverged_at`` set and accuracy 0.
    ``deadline`` (a ``time.time()``): past it, the run raises ``OutOfTime`` at its next step.

    Deterministic: the weights come from ``spec.seed``, the training batches from ``[seed, 1]`` and the
    held-out set from ``[seed, 2]`` (so every mixer sees the same data).

    The device is waited for only once per ``TRANSFER_STEPS`` steps or evaluation: the steps keep their
    losses on the device, their batches go over together in one transfer, and the optimiser
    clips without reading the gradient norm; a divergence is found, at its step, when the interval's
    losses come back."""
    task = spec.make_task()
    cfg = spec.model_config()
    xp = _array_module(backend)
    params = init_params(cfg, spec.seed, np.float32, xp)
    model = Model(cfg, backend)
    opt = AdamW(lr=spec.lr, steps=spec.steps, warmup=max(1, spec.steps // 10))
    data = np.random.default_rng([spec.seed, 1])
    test = task.batch(np.random.default_rng([spec.seed, 2]), grid.test_size)
    test = [Model.prepare(test.tokens[i:i + EVAL_BATCH], test.labels[i:i + EVAL_BATCH], xp)
            for i in range(0, grid.test_size, EVAL_BATCH)]
    curve = dict(step=[], train_loss=[], test_loss=[], test_accuracy=[])
    t0, step, diverged = time.time(), 0, None

    def record(step, train_loss):
        parts = [model.evaluate(params, b) for b in test]
        n = sum(p.queries for p in parts)
        loss, acc = (sum(p.loss * p.queries for p in parts) / n, sum(p.accuracy * p.queries for p in parts) / n)
        for k, v in zip(curve, (step, train_loss, loss, acc)):
            curve[k].append(v)
        return acc

    with _blas_single_thread(backend):
        record(0, None)
        window = []                     # the steps' losses since the last evaluation, on the device
        while step < spec.steps:
            for b in _device_batches(task, data, spec.batch, min(grid.eval_every - step % grid.eval_every,
                                                                 spec.steps - step, TRANSFER_STEPS), xp):
                if deadline is not None and time.time() > deadline:
                    raise OutOfTime(f"{spec.mixer} D={spec.width} T={spec.seq_len} kv={spec.kv_pairs}: "
                                    f"deadline reached at step {step} of {spec.steps}")
                step += 1
                metrics, grads = model.loss_and_grads(params, b, sync=False)
                opt.step(params, grads)
                window.append(metrics.loss)
                if on_step:
                    on_step()
            if step % grid.eval_every and step < spec.steps:
                continue
            losses = backends.to_kind(xp.stack(window), "numpy").astype(np.float64)
            bad = np.nonzero(~np.isfinite(losses))[0]
            if bad.size:                # recorded, not raised: a resumed sweep would hit it again
                diverged = step = step - len(window) + 1 + int(bad[0])
                for k, v in zip(curve, (step, None, None, 0.0)):
                    curve[k].append(v)
                break
            window = []
            if record(step, float(losses.mean())) >= grid.stop_at:
                break
    return dict(spec=asdict(spec), params=count_params(cfg), backend=backend, steps_run=step,
                seconds=time.time() - t0, final_accuracy=curve["test_accuracy"][-1],
                best_accuracy=max(curve["test_accuracy"]), final_test_loss=curve["test_loss"][-1],
                stopped_early=step < spec.steps, diverged_at=diverged, curve=curve)


# ============================================================================= the GPU budget
# Assumed for one H100/H200 in float32.  Device: cuBLAS float32 GEMMs at these shapes, the ops' fwd+bwd at
# rates derated from the README's H100 measurements for the short sequences here, elementwise traffic, and a
# floor per step for its ~450 small kernels (~3 us each, whatever their size).  Host: the Python and the
# launches of one step.  A step never waits for the device (``train``), so one run takes about the larger of
# its host and device times, and concurrent runs (``jobs``) share the device: a sweep takes about
# max(host total / jobs, device total, longest run), plus the start of the workers and the kernels' first
# compilation (NVRTC, on a cold cache).  Kernels of different processes interleaving at no cost is the
# optimistic part; the summary reports the measured time to check against.
GPU_RATES = dict(matmul=25e12, softmax=8e12, linear=3e12, decayed=3e12, zeros=1.2e12, bandwidth=2.0e12,
                 host_step=6e-3, device_step=1.5e-3, compile=60.0, start=15.0, cores=16)
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


@dataclass(frozen=True)
class RunCost:
    """Estimated seconds of one run at its whole step budget: the host's (Python, launches) and the device's."""
    host: float
    device: float

    @property
    def alone(self) -> float:
        """The run by itself: host and device overlap (no step waits for the device)."""
        return max(self.host, self.device)


def gpu_cost(spec: RunSpec, grid: Grid, rates=GPU_RATES) -> RunCost:
    """``RunCost`` of a run that goes its whole step budget (no early stop) on one H100/H200: the training
    steps plus the held-out evaluations (a forward pass: a third of a step's launches and FLOPs)."""
    c = step_cost(spec)
    op = MIXERS[spec.mixer].op
    compute = (c["matmul_flops"] / rates["matmul"] + c["op_flops"] / rates[op] + c["bytes"] / rates["bandwidth"])
    evals = spec.steps // grid.eval_every + 2
    passes = evals * math.ceil(grid.test_size / EVAL_BATCH)
    host = (spec.steps + passes / 3) * rates["host_step"]
    device = ((spec.steps + passes / 3) * rates["device_step"]
              + (spec.steps + evals * grid.test_size / spec.batch / 3) * compute)
    return RunCost(host, device)


def gpu_estimate(grid: Grid, seed: int = 0, jobs: int = 1, runs=None, rates=GPU_RATES) -> dict:
    """Estimated GPU time of ``runs`` (default: the whole grid) in ``jobs`` worker processes, every run to
    its full step budget (the bound; early stops only shorten it), plus the workers' start and the kernels'
    first compilation."""
    runs = grid.runs(seed) if runs is None else list(runs)
    costs = [gpu_cost(r, grid, rates) for r in runs]
    if not costs:
        return dict(runs=0, jobs=jobs, seconds=0.0, minutes=0.0, rates=rates)
    host, device = sum(c.host for c in costs), sum(c.device for c in costs)
    longest = max(c.alone for c in costs)
    if jobs > 1:
        train_s = max(host / min(jobs, rates["cores"]), device, longest)
    else:
        train_s = sum(c.alone for c in costs)
    total = train_s + rates["compile"] + rates["start"]
    return dict(runs=len(runs), jobs=jobs, seconds=total, minutes=total / 60, host_seconds=host,
                device_seconds=device, longest_run_seconds=longest, rates=rates)


# ============================================================================= the sweep
# Files: OUT/mqar_<grid>.json holds every finished run (rewritten by the sweep's main process only); each
# run is first written by whoever trained it to its own file OUT/mqar_<grid>.runs/<digest>.json, which the
# main process merges and then removes (a sweep killed in between merges it the next time).  A lock file
# keeps two sweeps from writing one results file at once.
FINISH_RESERVE = 20.0        # seconds kept, under --time-limit, for merging and the figures


def _results_path(out: str, grid: Grid) -> str:
    return os.path.join(out, f"{NAME}_{grid.name}.json")


def _runs_dir(path: str) -> str:
    return path[:-len(".json")] + ".runs"


def _run_file(runs_dir: str, spec: RunSpec) -> str:
    return os.path.join(runs_dir, hashlib.sha1(spec.key.encode()).hexdigest()[:16] + ".json")


def _save(path: str, doc: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    write_json(tmp, doc)
    os.replace(tmp, path)


def _load(path: str, warn) -> tuple:
    """(finished runs by key, per-run files read): the results file's runs, then every per-run file not
    merged yet."""
    done, merged = {}, []
    if os.path.exists(path):
        with open(path) as f:
            done = json.load(f).get("runs", {})
    runs_dir = _runs_dir(path)
    if os.path.isdir(runs_dir):
        for name in sorted(os.listdir(runs_dir)):
            if not name.endswith(".json"):
                continue
            try:
                with open(os.path.join(runs_dir, name)) as f:
                    rec = json.load(f)
                done[RunSpec(**rec["spec"]).key] = rec
                merged.append(os.path.join(runs_dir, name))
            except (ValueError, KeyError, TypeError) as e:
                warn(f"mqar: skipping {os.path.join(runs_dir, name)}: {type(e).__name__}: {e}")
    return done, merged


@contextlib.contextmanager
def _locked(path: str):
    """One sweep at a time per results file: ``path.lock`` holds the owner's pid; a lock whose process is
    gone is taken over."""
    lock = path + ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            try:
                with open(lock) as f:
                    pid = int(f.read().strip() or 0)
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(lock)                   # stale: its process is gone
                continue
            except PermissionError:
                pass
            raise RuntimeError(f"another sweep (pid {pid}) is writing {path}; wait for it or remove {lock}")
    else:
        raise RuntimeError(f"could not take {lock}")
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(lock)


@dataclass(frozen=True)
class Job:
    """One run as a worker process gets it."""
    spec: RunSpec
    grid: Grid
    backend: str
    runs_dir: str
    deadline: Optional[float] = None


@dataclass(frozen=True)
class Outcome:
    """What became of a job: its record (None: stopped at the deadline), or the error that ended it."""
    spec: RunSpec
    record: Optional[dict] = None
    error: str = ""


def run_job(job: Job) -> Outcome:
    """Worker entry: train one run and write its record to its own file (atomically)."""
    try:
        rec = train(job.spec, job.grid, job.backend, deadline=job.deadline)
    except OutOfTime:
        return Outcome(job.spec)
    except Exception as e:              # reported by the main process; the other runs go on
        return Outcome(job.spec, error=f"{type(e).__name__}: {e}")
    os.makedirs(job.runs_dir, exist_ok=True)
    _save(_run_file(job.runs_dir, job.spec), rec)
    return Outcome(job.spec, rec)


def warm_job(job: Job) -> str:
    """Worker entry: one tiny training run (batch 2, one step, two evaluations) of the job's mixer, length
    and head width, which compiles -- or loads from the on-disk cache -- every kernel its real runs launch,
    so the workers do not each compile them.  Returns an error text ('' when fine)."""
    tiny = replace(job.spec, batch=2, steps=1)
    try:
        train(tiny, replace(job.grid, eval_every=1, test_size=2), job.backend, deadline=job.deadline)
    except OutOfTime:
        return ""
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return ""


def warm_phases(todo: list) -> list:
    """Warm-up jobs' specs in two phases: one per mixer first (its kernels compile in parallel, each once),
    then one per remaining (task, mixer, length, head width) the runs need (mostly cache loads)."""
    seen, first, rest = set(), {}, []
    for s in todo:
        cell = (s.task, s.mixer, s.seq_len, s.width // s.heads)
        if cell in seen:
            continue
        seen.add(cell)
        if s.mixer not in first:
            first[s.mixer] = s
        else:
            rest.append(s)
    return [list(first.values()), rest]


def order_runs(todo: list, grid: Grid) -> list:
    """The order runs start in: the ``grid.core_mixers`` runs first (a sweep stopped by its time limit has
    those), then the others; within each, the longest first (so no long run starts last)."""
    return sorted(todo, key=lambda s: (s.mixer not in grid.core_mixers or s.task != "mqar",
                                       -gpu_cost(s, grid).alone))


def _execute(jobs_list: list, n_jobs: int, warm: list, warn):
    """Yield an ``Outcome`` per job as it ends: in this process when ``n_jobs`` is 1, else in ``n_jobs``
    spawned worker processes (after the warm-up phases), at most ``n_jobs`` runs in flight; no job starts
    after its deadline."""
    deadline = jobs_list[0].deadline if jobs_list else None
    if n_jobs <= 1:
        for job in jobs_list:
            if deadline is not None and time.time() > deadline:
                yield Outcome(job.spec)
                continue
            yield run_job(job)
        return
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    import multiprocessing
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for phase in warm:
            for job, err in zip(phase, pool.map(warm_job, phase)):
                if err:
                    warn(f"mqar: warm-up of {job.spec.mixer} T={job.spec.seq_len} failed: {err}")
        queue, inflight = list(jobs_list), {}
        while queue or inflight:
            while queue and len(inflight) < n_jobs:
                job = queue.pop(0)
                if deadline is not None and time.time() > deadline:
                    yield Outcome(job.spec)
                    continue
                inflight[pool.submit(run_job, job)] = job
            if not inflight:
                continue
            finished, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for f in finished:
                job = inflight.pop(f)
                try:
                    yield f.result()
                except Exception as e:          # the worker itself died
                    yield Outcome(job.spec, error=f"{type(e).__name__}: {e}")


def run(out=DEFAULT_OUT, quick=False, backend="numpy", seed=0, progress_bar=True, plots=True, grid=None,
        jobs=1, time_limit=None, warn=None):
    """Run (or resume) the sweep.  ``jobs``: worker processes training runs at once (1: this process).
    ``time_limit`` (seconds): no run goes on past ``time_limit - FINISH_RESERVE`` after the start (the
    unfinished ones are dropped and run again on resume), so the whole call ends within about
    ``time_limit``.  ``warn``: where the estimate and notes go (default: standard error)."""
    t_start = time.time()
    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    if jobs < 1:
        raise ValueError(f"mqar: jobs must be >= 1, got {jobs}")
    if time_limit is not None and time_limit <= FINISH_RESERVE:
        raise ValueError(f"mqar: time_limit must exceed {FINISH_RESERVE:.0f} s (kept for the results and "
                         f"figures), got {time_limit}")
    deadline = None if time_limit is None else t_start + time_limit - FINISH_RESERVE
    grid = grid or grid_for(quick, backend)
    os.makedirs(out, exist_ok=True)
    path = _results_path(out, grid)
    with _locked(path):
        done, merged = _load(path, warn)
        specs = grid.runs(seed)
        todo = order_runs([s for s in specs if s.key not in done], grid)
        jobs = max(1, min(jobs, len(todo)))
        doc = dict(experiment=NAME, grid=grid.name, settings=asdict(grid),
                   method=__doc__.strip().split("\n\n")[0], gpu_estimate=gpu_estimate(grid, seed, jobs),
                   runs=done)
        if merged:                          # runs a killed sweep left in their own files
            _save(path, doc)
            for f in merged:
                os.remove(f)
        if todo:
            est = gpu_estimate(grid, seed, jobs, runs=todo)
            where = "GPU estimate" if backend.split(":", 1)[0] != "numpy" else "GPU estimate (this is NumPy)"
            warn(f"mqar {grid.name}: {len(todo)} of {len(specs)} runs to do, {jobs} at a time; {where}, every "
                 f"run to its full budget: {est['minutes']:.1f} min"
                 + (f"; stopping runs after {time_limit - FINISH_RESERVE:.0f} s" if time_limit else ""))
        runs_dir = _runs_dir(path)
        job_list = [Job(s, grid, backend, runs_dir, deadline) for s in todo]
        warm = [[Job(s, grid, backend, runs_dir, deadline) for s in phase] for phase in warm_phases(todo)]
        bar = progress(None, f"mqar ({grid.name}, {len(todo)} runs to do, {len(specs) - len(todo)} in the file)",
                       progress_bar, total=sum(s.steps for s in todo))
        stopped, failed = [], []
        with bar:
            for o in _execute(job_list, jobs, warm if jobs > 1 else [], warn):
                bar.update(o.spec.steps)
                if o.record is not None:
                    done[o.spec.key] = o.record
                    _save(path, doc)
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(_run_file(runs_dir, o.spec))
                    bar.set_postfix_str(f"{o.spec.task} {o.spec.mixer} D={o.spec.width} T={o.spec.seq_len} "
                                        f"kv={o.spec.kv_pairs}: {o.record['final_accuracy']:.3f}")
                elif o.error:
                    failed.append(o)
                    warn(f"mqar: FAILED {o.spec.task} {o.spec.mixer} D={o.spec.width} T={o.spec.seq_len} "
                         f"kv={o.spec.kv_pairs}: {o.error}")
                else:
                    stopped.append(o.spec)
        _save(path, doc)
        with contextlib.suppress(OSError):
            os.rmdir(runs_dir)                      # only when empty
    res = dict(doc, runs={k: done[k] for k in (s.key for s in specs) if k in done}, quick=quick, backend=backend,
               seed=seed, jobs=jobs, wall_seconds=time.time() - t_start, stopped_at_time_limit=len(stopped),
               failed=len(failed), planned=len(specs))
    res["tables"] = tables(res)
    files = [path]
    if plots:
        files += _plot(res, grid, os.path.join(out, f"{NAME}_{grid.name}"))
    res["files"] = files
    if failed:
        raise RuntimeError(f"mqar: {len(failed)} run(s) failed (the others are in {path}); first: "
                           f"{failed[0].spec.mixer} D={failed[0].spec.width} T={failed[0].spec.seq_len}: "
                           f"{failed[0].error}")
    if not res["runs"]:
        raise RuntimeError(f"mqar: no run finished within the time limit ({time_limit} s)")
    return res


# ============================================================================= tables
def _mqar_runs(res):
    return [r for r in res["runs"].values() if r["spec"]["task"] == "mqar"]


def tables(res) -> dict:
    """Final accuracy per (T, kv, mixer, width); per mixer and (T, kv), the smallest width whose final
    accuracy reaches ``ACCURACY_GOAL`` (None: no width did); the difference task per (mixer, width)."""
    acc, smallest, diff = {}, {}, {}
    by_cell = lambda r: (r["spec"]["seq_len"], r["spec"]["kv_pairs"], r["spec"]["width"])
    for r in sorted(_mqar_runs(res), key=by_cell):          # cells by (T, kv), widths ascending
        s = r["spec"]
        acc.setdefault(f"T={s['seq_len']} kv={s['kv_pairs']}", {}).setdefault(s["mixer"], {})[s["width"]] = \
            r["final_accuracy"]
    for cell, by_mixer in acc.items():
        for m, by_w in by_mixer.items():
            ok = [w for w, a in sorted(by_w.items()) if a >= ACCURACY_GOAL]
            smallest.setdefault(cell, {})[m] = ok[0] if ok else None
    for r in sorted(res["runs"].values(), key=by_cell):
        s = r["spec"]
        if s["task"] == "difference":
            diff.setdefault(s["mixer"], {})[s["width"]] = r["final_accuracy"]
    runs = list(res["runs"].values())
    steps = sum(r["steps_run"] for r in runs)
    seconds = sum(r["seconds"] for r in runs)
    timing = dict(seconds=seconds, steps=steps, seconds_per_step=seconds / max(1, steps))
    if "wall_seconds" in res:
        timing.update(wall_seconds=res["wall_seconds"], jobs=res["jobs"])
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
    lines += ["", f"measured here ({res['backend']}): {tm['seconds'] / 60:.1f} min of runs for {tm['steps']} training "
              f"steps, {1e3 * tm['seconds_per_step']:.1f} ms a step within a run (with its share of evaluations)"
              + (f"; this call: {tm['wall_seconds'] / 60:.1f} min wall with {tm['jobs']} job(s)"
                 if "wall_seconds" in tm else "")
              + f"; GPU estimate of the whole grid with {est.get('jobs', 1)} job(s), every run to its full budget: "
                f"{est['minutes']:.1f} min"]
    missing = res.get("planned", len(res["runs"])) - len(res["runs"])
    if missing:
        lines += ["", f"INCOMPLETE: {len(res['runs'])} of {res['planned']} runs in the file "
                      f"({res.get('stopped_at_time_limit', 0)} stopped at the time limit); run the same command "
                      f"again to continue"]
    return "\n".join(lines)


def load(path: str) -> dict:
    """A results file as ``run`` returns it (with its ``tables``), for ``summary`` and ``markdown``."""
    with open(path) as f:
        res = json.load(f)
    res["tables"] = tables(res)
    return res


def markdown(res) -> str:
    """README's tables of a sweep: final held-out accuracy per mixer and (T, pairs) at every width, the
    smallest width reaching ``ACCURACY_GOAL`` ("none": no width did; "-": no run yet), and the difference
    task's accuracies."""
    t = res["tables"]
    cells = list(t["accuracy"])
    mixers = [m for m in MIXERS if any(m in t["accuracy"][c] for c in cells)]
    widths = sorted({w for c in cells for bm in t["accuracy"][c].values() for w in bm})
    head = "| mixer | " + " | ".join(c.replace(" kv=", ", ") + " pairs" for c in cells) + " |"
    rule = "|---" * (len(cells) + 1) + "|"

    def rows(cell_text):
        return [f"| {MIXERS[m].label} | " + " | ".join(cell_text(c, m) for c in cells) + " |" for m in mixers]

    def accuracies(c, m):
        by_w = t["accuracy"][c].get(m, {})
        return " / ".join("-" if by_w.get(w) is None else f"{by_w[w]:.2f}" for w in widths)

    def smallest(c, m):
        if m not in t["smallest_width"][c]:
            return "-"
        w = t["smallest_width"][c][m]
        return "none" if w is None else str(w)
    out = [f"Final held-out accuracy at widths {' / '.join(map(str, widths))}:", "", head, rule, *rows(accuracies),
           "", f"Smallest width that reaches {ACCURACY_GOAL:.0%} accuracy (\"none\": none of "
               f"{', '.join(map(str, widths))}):", "", head, rule, *rows(smallest)]
    if t["difference"]:
        parts = [f"{MIXERS[m].label} " + " / ".join(f"{a:.3f}" for _, a in sorted(by_w.items()))
                 for m, by_w in sorted(t["difference"].items(), key=lambda kv: -max(kv[1].values()))]
        dw = sorted({w for by_w in t["difference"].values() for w in by_w})
        out += ["", f"Difference recall (width {' / '.join(map(str, dw))}): " + ", ".join(parts) + "."]
    return "\n".join(out)


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
    if axes[0][0].get_legend_handles_labels()[0]:
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
    if axes[0][0].get_legend_handles_labels()[0]:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    files.append(save_fig(fig, f"{stem}_curves.png"))
    return files
