"""Benchmarks declared as data: the grid of cells and the lines to compare (like triton's perf_report).

Three kinds of grid (``kind``): ``Grid`` ("ops") times the ops' variants and peers, ``DecodeGrid``
("decode") the one-token steps at several batch sizes (workbench/bench/decode.py), ``PackedGrid``
("packed") packed sequences against padding and against one sequence (workbench/bench/packed.py).

A cell of ``Grid`` is (op, T, D, dtype, causal); every line of a cell -- our variants of the listed backends, the public
API calling them (``api``), and the op's peers -- is timed on the same freshly drawn inputs, for each pass.  ``baseline`` names, per op, the
lines the ratios are taken against, in order of preference: the first one measured in the cell is its
baseline.  ``budget_s`` bounds the run's timing (each line's set-up and first call per pass -- compiles, a peer's
autotuning -- not counted): cells not started when it is spent are listed as skipped.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

from ..opspec import OPS, SPECS, STATE_OPS
from .costs import PASSES

GPU_BASELINES = {
    "softmax": ("peer:sdpa-flash", "peer:sdpa-cudnn", "peer:sdpa-efficient"),
    "linear": ("peer:fla-linear",),
    "decayed": ("peer:fla-gla-g", "peer:fla-gla-gamma"),
    "zeros": ("peer:zeros-prefix-torch",),
}
CPU_BASELINES = {op: ("numpy:explicit",) for op in OPS}


@dataclass(frozen=True)
class Grid:
    kind: ClassVar[str] = "ops"
    name: str
    description: str
    device: str                                 # "gpu" (CUDA-event timing) or "host" (perf_counter)
    ops: tuple = OPS
    backends: tuple = ("numba", "cupy")         # whose registered variants are our lines
    exclude: tuple = ()                         # variant keys left out ("numpy:explicit", ...)
    only: tuple = ()                            # when set, only these line keys ("cupy:flash", "peer:fla-linear")
    peers: bool = True
    dtypes: tuple = ("float32",)
    Ts: tuple = (1024,)
    Ds: tuple = (64,)                           # head dim, Dk = Dv = D
    lead: tuple = (2, 8)                        # (batch, heads); N = B * H
    causal: tuple = (True,)
    passes: tuple = PASSES
    baseline: dict = field(default_factory=lambda: dict(GPU_BASELINES))
    flush_l2: bool = True
    target_ms: float = 100.0                    # time spent on the samples of one measurement
    budget_s: float = 300.0
    n_gates: int = 2
    max_T: dict = field(default_factory=dict)   # {substring of a line key: largest T it is run at}
    # API lines ("api:<variant>"): the public op / vjp + pullback wall-clocked next to the variant's own time.
    # "default": one per backend (the variant the backend name alone picks for the dtype); "all": one per
    # variant line; "off": none.  Each measurement takes up to api_reps calls within about api_budget_ms.
    api: str = "default"
    api_reps: int = 1000
    api_budget_ms: float = 100.0
    # GPU, with flush_l2: hold the GPU this long (a spin kernel) after each flush, so the host has queued the
    # whole timed call before the GPU starts it: the time is the kernels' own, without host launch gaps.
    head_start_ms: float = 0.0

    def wants(self, key: str) -> bool:
        """A line is run when no ``only`` is set, or its key or its group ("cupy", "peer") is listed."""
        return not self.only or key in self.only or key.split(":", 1)[0] in self.only

    def too_long(self, key: str, T: int):
        """The reason a line is not run at this T (``max_T``), else None."""
        for pat, limit in self.max_T.items():
            if pat in key and T > limit:
                return f"not run above T={limit} in grid {self.name} (max_T: {pat!r})"
        return None

    def cells(self) -> list:
        """(op, T, D, dtype, causal) in run order: the smallest T of every op first, so a spent budget cuts
        the largest cells.  A causal-only op (decayed) gets one cell, causal=True."""
        out = []
        for T in self.Ts:
            for D in self.Ds:
                for dtype in self.dtypes:
                    for causal in self.causal:
                        for op in self.ops:
                            if causal not in SPECS[op].causal_values:
                                continue
                            out.append((op, T, D, dtype, causal))
        return out

    def filtered(self, ops=(), backends=(), dtypes=(), Ts=(), Ds=(), passes=(), budget_s=None,
                 flush_l2=None, peers=None) -> "Grid":
        """The grid restricted by the command line's filters (empty = keep)."""
        g = self
        if ops:
            g = replace(g, ops=tuple(o for o in OPS if o in ops))
        if backends:                            # groups "cupy", "peer", or line keys "cupy:flash", "peer:sdpa-flash"
            groups = {b.split(":", 1)[0] for b in backends}
            g = replace(g, backends=tuple(b for b in g.backends + tuple(sorted(groups)) if b in groups
                                          and b != "peer"), only=tuple(backends),
                        peers=g.peers and "peer" in groups)
            g = replace(g, backends=tuple(dict.fromkeys(g.backends)))
        if dtypes:
            g = replace(g, dtypes=tuple(dtypes))
        if Ts:
            g = replace(g, Ts=tuple(sorted(Ts)))
        if Ds:
            g = replace(g, Ds=tuple(Ds))
        if passes:
            g = replace(g, passes=tuple(p for p in PASSES if p in passes))
        if budget_s is not None:
            g = replace(g, budget_s=budget_s)
        if flush_l2 is not None:
            g = replace(g, flush_l2=flush_l2)
        if peers is not None:
            g = replace(g, peers=peers)
        return g


GRIDS = {
    "cpu": Grid(
        "cpu", "NumPy backend on the host: both references, small T (seconds)", device="host",
        backends=("numpy",), peers=False, dtypes=("float32",), Ts=(64, 256), Ds=(16,), lead=(1, 2),
        baseline=dict(CPU_BASELINES), flush_l2=False, target_ms=60.0, budget_s=120.0, api="off"),
    "cpu-api": Grid(
        "cpu-api", "host overhead of the public API on the NumPy backend: T 1 and 64, every variant", device="host",
        backends=("numpy",), peers=False, dtypes=("float32",), Ts=(1, 64), Ds=(16,), lead=(1, 1),
        baseline=dict(CPU_BASELINES), flush_l2=False, target_ms=100.0, budget_s=120.0, api="all",
        api_budget_ms=1000.0),
    "api": Grid(
        "api", "GPU: host overhead of the public API at T 64 (B = H = 1, D 64), every variant, fp16 and fp32",
        device="gpu", peers=False, dtypes=("float16", "float32"), Ts=(64,), Ds=(64,),
        lead=(1, 1), target_ms=50.0, budget_s=400.0, api="all", api_budget_ms=1000.0, head_start_ms=2.0),
    "headline": Grid(
        "headline", "the GPU session: all ops, ours vs peers, T 1k..16k, D 64, fp16 and fp32, causal",
        device="gpu", dtypes=("float16", "float32"), Ts=(1024, 4096, 16384), Ds=(64,), lead=(2, 16),
        target_ms=80.0, budget_s=200.0, max_T={":naive": 4096}),
    # Cells the kernel notes (docs/kernels/*.md) quote that the headline grid does not hold (B=2, H=16, causal):
    "softmax-d128": Grid(
        "softmax-d128", "GPU: softmax fp16 at D 128, T 4k and 16k, ours vs SDPA", device="gpu",
        ops=("softmax",), backends=("cupy",), dtypes=("float16",), Ts=(4096, 16384), Ds=(128,), lead=(2, 16),
        target_ms=80.0, budget_s=90.0, max_T={":naive": 4096}),
    "chunked-long": Grid(
        "chunked-long", "GPU: linear and decayed at T 2k and 64k, fp16 and fp32, ours vs fla",
        device="gpu", ops=("linear", "decayed"), dtypes=("float16", "float32"), Ts=(2048, 65536), Ds=(64,),
        lead=(2, 16), target_ms=80.0, budget_s=120.0, max_T={":naive": 4096}),
    "zeros-paper": Grid(
        "zeros-paper", "GPU: ZeroS fp32 T 2048 D 64 against the paper's prefix-sum form",
        device="gpu", ops=("zeros",), dtypes=("float32",), Ts=(2048,), Ds=(64,), lead=(2, 16),
        target_ms=80.0, budget_s=60.0, max_T={":naive": 4096}),
    "default": Grid(
        "default", "GPU: all ops, T 1k..8k, D 64 and 128, fp16 and fp32, causal and not", device="gpu",
        dtypes=("float16", "float32"), Ts=(1024, 2048, 4096, 8192), Ds=(64, 128), lead=(2, 8),
        causal=(True, False), budget_s=900.0, max_T={":naive": 4096}),
    "scaling": Grid(
        "scaling", "GPU: time against T (512..32k) for every op, fp16, D 64, forward+backward", device="gpu",
        dtypes=("float16",), Ts=(512, 1024, 2048, 4096, 8192, 16384, 32768), Ds=(64,), lead=(1, 8),
        passes=("fwd", "fwdbwd"), target_ms=60.0, budget_s=300.0, max_T={":naive": 8192}),
    "cpu-scaling": Grid(
        "cpu-scaling", "NumPy backend: time against T (32..512)", device="host", backends=("numpy",),
        peers=False, Ts=(32, 64, 128, 256, 512), Ds=(16,), lead=(1, 2), passes=("fwd",),
        baseline=dict(CPU_BASELINES), flush_l2=False, target_ms=40.0, budget_s=120.0, api="off"),
}


# ----------------------------------------------------------------------------- decode and packing
STEP_OPS = STATE_OPS


def _refuse(grid, what: str, given) -> None:
    if given:
        raise ValueError(f"grid {grid.name} ({grid.kind}) has no {what}; got {', '.join(map(str, given))}")


def _restricted(grid, ops, dtypes, Ds, budget_s, flush_l2):
    """The filters every grid kind takes: ops (within the grid's), dtypes, head dims, budget, L2 flush."""
    if ops:
        unknown = [o for o in ops if o not in grid.ops]
        if unknown:
            _refuse(grid, f"op {unknown[0]!r} (its ops: {', '.join(grid.ops)})", unknown)
        grid = replace(grid, ops=tuple(o for o in grid.ops if o in ops))
    if dtypes:
        grid = replace(grid, dtypes=tuple(dtypes))
    if Ds:
        grid = replace(grid, Ds=tuple(Ds))
    if budget_s is not None:
        grid = replace(grid, budget_s=budget_s)
    if flush_l2 is not None:
        grid = replace(grid, flush_l2=flush_l2)
    return grid


def _cells(grid, cell, axis) -> list:
    """The cells cell(op, x, D, dtype) of a decode or packed grid: x along its own axis (batches, mixes) in order,
    then the head dims, the dtypes, and every op at each."""
    return [cell(op, x, D, dt) for x in axis for D in grid.Ds for dt in grid.dtypes for op in grid.ops]


@dataclass(frozen=True)
class DecodeCell:
    op: str
    B: int                                      # batch: sequences advanced by one step
    D: int                                      # head dim, Dk = Dv = D
    dtype: str


@dataclass(frozen=True)
class DecodeGrid:
    """Decode throughput: one token of ``op`` for B sequences of ``heads`` heads (B * heads states of D x D)
    from a random state, per line: the step kernel ("step:kernel"), the array form on the arrays' module
    ("step:array"; on the host: NumPy), and the public step wall-clocked per call ("api:step")."""
    kind: ClassVar[str] = "decode"
    name: str
    description: str
    device: str
    ops: tuple = STEP_OPS
    dtypes: tuple = ("float16", "float32")
    batches: tuple = (1, 4, 16, 64, 256)
    heads: int = 1
    Ds: tuple = (64,)
    paths: tuple = ("kernel", "array")          # workbench.steps paths timed as lines "step:<path>"
    api: str = "default"                        # "default": an "api:step" line; "off": none
    options: dict = field(default_factory=dict)  # {op: step options}, e.g. {"linear": {"normalize": True}}
    n_gates: int = 2
    flush_l2: bool = True                       # GPU: every sample reads the state from DRAM, as in a model
    head_start_ms: float = 1.0                  # GPU: hide the host's launch time (the kernel's own time;
                                                # the array form on CuPy launches ~30 small kernels)
    target_ms: float = 30.0
    budget_s: float = 120.0
    api_reps: int = 300
    api_budget_ms: float = 60.0
    passes: tuple = ("step",)

    def cells(self) -> list:
        """Smallest batch of every op first (a spent budget cuts the largest)."""
        return _cells(self, DecodeCell, self.batches)

    def filtered(self, ops=(), backends=(), dtypes=(), Ts=(), Ds=(), passes=(), budget_s=None, flush_l2=None,
                 peers=None) -> "DecodeGrid":
        _refuse(self, "T axis (a step is one token; the batches are its axis)", Ts)
        _refuse(self, "backend filter (its lines: step:kernel, step:array, api:step)", backends)
        _refuse(self, "pass other than step", [p for p in passes if p != "step"])
        return _restricted(self, ops, dtypes, Ds, budget_s, flush_l2)


@dataclass(frozen=True)
class PackedCell:
    op: str
    mix: str                                    # a key of the grid's mixes
    D: int
    dtype: str


@dataclass(frozen=True)
class PackedGrid:
    """Packed sequences: per variant of ``backends`` that takes ``cu_seqlens`` (the "packed" feature), the
    sequences of one length mix packed into one T axis (layout "packed"), the same sequences padded to the
    longest as one batch (layout "padded"), and one sequence of the same total length (layout "single"),
    ``heads`` heads each, timed per pass on the same tokens."""
    kind: ClassVar[str] = "packed"
    name: str
    description: str
    device: str
    mixes: dict                                 # name -> sequence lengths
    ops: tuple = ("linear", "decayed", "zeros", "softmax")
    backends: tuple = ("cupy", "numba")
    dtypes: tuple = ("float16",)
    heads: int = 8
    Ds: tuple = (64,)
    passes: tuple = ("fwd", "fwdbwd")
    n_gates: int = 2
    flush_l2: bool = True
    api: str = "off"                            # (the harness's timing switch: no API lines here)
    head_start_ms: float = 0.0
    target_ms: float = 60.0
    budget_s: float = 180.0

    def cells(self) -> list:
        return _cells(self, PackedCell, self.mixes)

    def filtered(self, ops=(), backends=(), dtypes=(), Ts=(), Ds=(), passes=(), budget_s=None, flush_l2=None,
                 peers=None) -> "PackedGrid":
        _refuse(self, "T axis (its sequence lengths are the mixes)", Ts)
        g = _restricted(self, ops, dtypes, Ds, budget_s, flush_l2)
        if backends:
            g = replace(g, backends=tuple(dict.fromkeys(b.split(":", 1)[0] for b in backends)))
        if passes:
            g = replace(g, passes=tuple(p for p in PASSES if p in passes))
        return g


# a mix of awkward lengths (chunk edges 63, 64, 65; one token; 128 +- 1) and long ones: 16 sequences, 16291
# tokens, the longest 4096 (padding to it is 4x the tokens); and 16 equal lengths (padding costs nothing:
# what packing itself costs)
MIXED = (4096, 1, 63, 64, 65, 2048, 1000, 3000, 512, 129, 127, 777, 1500, 2500, 300, 109)
GRIDS.update({
    "decode": DecodeGrid(
        "decode", "GPU: tokens/s of the step kernels at batch 1..256 (one head of 64 x 64 per sequence), "
        "fp16, bf16 and fp32, against the state's read + write bandwidth bound", device="gpu",
        dtypes=("float16", "bfloat16", "float32")),
    "cpu-decode": DecodeGrid(
        "cpu-decode", "NumPy steps on the host at batch 1 and 8, D 16 (seconds)", device="host",
        dtypes=("float32",), batches=(1, 8), Ds=(16,), paths=("array",), api="off", flush_l2=False,
        head_start_ms=0.0, target_ms=20.0, budget_s=60.0),
    "packed": PackedGrid(
        "packed", "GPU: 16 sequences of mixed lengths (16k tokens) packed, padded to 4096, and as one sequence; "
        "16 equal ones; fp16 and fp32, D 64, 8 heads", device="gpu",
        mixes={"mixed-16": MIXED, "equal-16x1k": (1024,) * 16}, dtypes=("float16", "float32"),
        head_start_ms=2.0),                     # the GPU's work: the host's segment table is not timed
    "cpu-packed": PackedGrid(
        "cpu-packed", "NumPy references: 5 sequences (1, 63, 64, 65, 7) packed, padded and as one, D 16",
        device="host", mixes={"awkward-5": (1, 63, 64, 65, 7)}, backends=("numpy",), dtypes=("float32",),
        heads=1, Ds=(16,), passes=("fwd", "fwdbwd"), flush_l2=False, target_ms=20.0, budget_s=120.0),
})


def get_grid(name: str) -> Grid:
    if name not in GRIDS:
        raise ValueError(f"unknown grid {name!r}; available: {', '.join(GRIDS)}")
    return GRIDS[name]
