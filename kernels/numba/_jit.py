"""How every Numba kernel is compiled: per head-dim bucket, cached on disk, listed for warm-up.

Buckets.  A kernel is specialised on a head-dim *bucket* DB (the smallest of ``BUCKETS`` that holds both
head dims, as the CUDA kernels' template parameter D), on the accumulation type and on its tile sizes (a
function of the bucket).  The actual head dims are read from the arrays' shapes at run time; tiles are
zero-filled past them and writes are masked, so every (Dk, Dv) of one bucket runs the same compiled kernel
(any pair up to 64 shares the 64 kernels).  Per-thread arrays (the rows a thread accumulates) are sized by
the bucket and indexed only by compile-time loop indices, so they stay in registers; loops over them
walk the bucket in groups of ``GROUP`` columns and skip, at run time, every group wholly past the actual
dim (``for d0 in range(0, DB, G): if d0 < D: for d in range(d0, d0 + G): ...``), so a head dim of 48 in
the 64 bucket does 48/64 of the work plus one uniform branch per group.  Options that only change indices,
loop bounds or a uniform branch (causal, direction, feature map, normalize, output parts) are run-time
arguments: they cost a branch, where a compile-time option costs one more compile per value.

Disk cache.  Every kernel is made by ``kernel`` = ``cuda.jit(cache=True)``.  Kernels are closures made by
``functools.lru_cache``'d factories; Numba's cache key holds the signature, the GPU's compute capability,
the kernel's bytecode and a hash of its closure cells (the bucket, tiles and type: plain values, and the
device functions it calls, which serialise by value), so each (bucket, dtype) kernel is its own cache entry,
reused by every later process on the machine.  The cache index is dropped when the kernel's *source file*
changes, so a kernel must call device functions only through its closure (made by a factory, as
``row_dot`` below) or define them in its own file; a device function imported from another module as a
global would not invalidate the cache when edited (tests/test_numba_jit.py checks this rule).
Where the cache lives: ``kernels/numba/__pycache__`` when writable, else Numba's user-wide cache dir;
``NUMBA_CACHE_DIR`` overrides both (``scripts/shape_sweep.py --fresh-cache`` points it at an empty folder).

``compile_stats()`` counts the disk-cache hits and misses (fresh compiles) of every kernel made so far.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import numba
import numpy as np
from numba import cuda

BUCKETS = (64, 128, 256)     # head-dim buckets (tests shrink them to keep the simulator fast)
GROUP = 16                   # columns per run-time skip group inside a bucket
UIDX = numba.uint64          # index type of the hot paths: unsigned indices skip Numba's negative-index wrap-around
UNROLL_PASSES = 8            # tile_loader: passes over a tile up to which its loop is unrolled

KERNELS: list = []           # every kernel dispatcher made, in order (for compile_stats and the tests)


def bucket(*dims: int) -> int:
    """The smallest bucket holding every head dim given (ValueError past the largest)."""
    d = max(int(x) for x in dims)
    for b in BUCKETS:
        if d <= b:
            return b
    raise ValueError(f"head dims up to {BUCKETS[-1]} (got {', '.join(str(int(x)) for x in dims)})")


def group(DB: int) -> int:
    """The skip-group width for bucket DB (GROUP, or DB itself for a smaller test bucket)."""
    return min(GROUP, DB)


def _serialise_cache_saves() -> None:
    """Make Numba's disk-cache writes safe between processes.

    Every specialisation of one factory kernel (each bucket, type, signature) shares one index file, and
    Numba names a new entry's data file by the first number its index does not use yet.  Two processes
    compiling different specialisations at once (``check -j``, parallel test runs) can both take number 1:
    A writes its index {a: 1}, B overwrites it with {b: 1} and writes data 1, then A writes data 1; B's
    key now loads A's kernel, silently (seen on an H200: Numba ZeroS GPU tests failing only while another
    process compiled into the same cache).  Here each save (read the index, pick the name, write the index
    and the data) runs under an exclusive ``flock`` on a lock file beside the index, so no two processes
    interleave; loads need no lock (index and data files are replaced atomically and a data file never
    changes its key)."""
    try:
        from numba.cuda.core import caching
    except ImportError:                          # another numba layout: leave it as it is
        return
    cls = getattr(caching, "IndexDataCacheFile", None)
    if cls is None or getattr(cls.save, "serialised", False):
        return
    unlocked = cls.save

    def save(self, key, data):
        import fcntl
        os.makedirs(self._cache_path, exist_ok=True)
        with open(self._index_path + ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                unlocked(self, key, data)
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    save.serialised = True
    cls.save = save


_serialise_cache_saves()


def kernel(fn=None, *, max_registers=None):
    """``cuda.jit(cache=True)``, and remember the dispatcher.  ``max_registers`` caps the registers per thread
    (ptxas spills the rest); Numba's disk-cache key does not hold it, so a factory must fix it by values in the
    kernel's closure (or the kernel's source file) rather than vary it alone."""
    if fn is None:
        return functools.partial(kernel, max_registers=max_registers)
    opts = {"max_registers": max_registers} if max_registers and not numba.config.ENABLE_CUDASIM else {}
    k = cuda.jit(cache=True, **opts)(fn)
    KERNELS.append(k)
    return k


def device(fn):
    return cuda.jit(device=True)(fn)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def pow2_at_least(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def nb_type(dtype):
    """The Numba accumulation type for an array dtype: float64 for float64, float32 otherwise."""
    return numba.float64 if np.dtype(dtype) == np.float64 else numba.float32


def work_dtype(dtype) -> np.dtype:
    """The NumPy accumulation dtype: float64 for float64 inputs, float32 otherwise."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


@functools.lru_cache(maxsize=None)
def identity(acc):
    """Device function x -> x (the default element map of the row helpers)."""
    def ident(x):
        return x
    return device(ident)


@functools.lru_cache(maxsize=None)
def row_thread():
    """Device function rows(q, v) -> (n, t, T, Dk, Dv) of a one-thread-per-row kernel (grid (N, row
    blocks), block = rows): the thread's leading index n and row t (possibly >= T in the last block), the
    sequence length T and the head dims Dk = q.shape[2], Dv = v.shape[2]."""
    def rows(q, v):
        return (cuda.blockIdx.x, cuda.blockIdx.y * cuda.blockDim.x + cuda.threadIdx.x, q.shape[1], q.shape[2],
                v.shape[2])
    return device(rows)


@functools.lru_cache(maxsize=None)
def tile_thread(ROWS: int):
    """Device function rows(q, v) -> (n, r0, tid, r, T, Dk, Dv, live) of a kernel whose blocks are ROWS
    threads for ROWS rows (grid (N, row tiles)): the leading index n, the block's first row r0, the thread's
    index tid and row r = r0 + tid, the sequence length, the head dims (of q and v) and whether r < T."""
    def rows(q, v):
        r0 = cuda.blockIdx.y * ROWS
        tid = cuda.threadIdx.x
        T = q.shape[1]
        return cuda.blockIdx.x, r0, tid, r0 + tid, T, q.shape[2], v.shape[2], r0 + tid < T
    return device(rows)


@functools.lru_cache(maxsize=None)
def sequence_run(NT: int):
    """Device function run(cu, u) -> (j, a, b, lo, hi) of a scan with one block per (n, sequence j =
    blockIdx.y) of NT threads: the sequence [a, b) = [cu[j], cu[j + 1]) and thread u's contiguous run of its
    rows [lo, hi) (runs of ceil((b - a) / NT) rows in order, the last ones short or empty)."""
    def run(cu, u):
        j = cuda.blockIdx.y
        a, b = cu[j], cu[j + 1]
        SEG = (b - a + NT - 1) // NT
        lo = min(a + u * SEG, b)
        return j, a, b, lo, min(lo + SEG, b)
    return device(run)


# Per-thread row helpers.  ``row`` is a thread's local array of DB values; every loop over it is unrolled over
# the bucket (constant indices, so the row stays in registers after inlining) in skip groups.  Global loads
# past D are never issued; shared tiles are zero past D, so tile loops need no per-element guard.
@functools.lru_cache(maxsize=None)
def row_dot(DB: int, acc, fn=None):
    """Device function dot(X, n, t, Y, i, D) = sum_{d < D} fn(X[n, t, d]) fn(Y[n, i, d]) (fn: identity, or a
    feature map), straight from global memory."""
    G = group(DB)
    ZERO = acc(0)
    f = fn or identity(acc)

    def dot(X, n, t, Y, i, D):
        s = ZERO
        for d0 in range(0, DB, G):
            if d0 < D:
                for d in range(d0, d0 + G):
                    if d < D:
                        s += f(acc(X[n, t, d])) * f(acc(Y[n, i, d]))
        return s
    return device(dot)


@functools.lru_cache(maxsize=None)
def row_axpy(DB: int, acc, fn=None):
    """Device function axpy(row, a, X, n, i, D): row[d] += a fn(X[n, i, d]) for d < D, from global memory."""
    G = group(DB)
    f = fn or identity(acc)

    def axpy(row, a, X, n, i, D):
        for d0 in range(0, DB, G):
            if d0 < D:
                for d in range(d0, d0 + G):
                    if d < D:
                        row[d] += a * f(acc(X[n, i, d]))
    return device(axpy)


@functools.lru_cache(maxsize=None)
def row_zero(DB: int, acc):
    """Device function zero(row): row[d] = 0 for the whole bucket (a thread's accumulator, before its loop)."""
    ZERO = acc(0)

    def zero(row):
        for d in range(DB):
            row[d] = ZERO
    return device(zero)


@functools.lru_cache(maxsize=None)
def row_store(DB: int):
    """Device function store(X, n, t, row, D, mult): X[n, t, d] = row[d] mult for d < D."""
    def store(X, n, t, row, D, mult):
        for d in range(DB):
            if d < D:
                X[n, t, d] = row[d] * mult
    return device(store)


@functools.lru_cache(maxsize=None)
def tile_dot(DB: int, acc):
    """Device function dot(A, r, B, j, D) = sum_{d < D} A[r, d] B[j, d] of two rows of 2-D arrays (shared
    tiles, or a thread's own (1, DB) row)."""
    G = group(DB)
    ZERO = acc(0)

    def dot(A, r, B, j, D):
        s = ZERO
        for d0 in range(0, DB, G):
            if d0 < D:
                for d in range(d0, d0 + G):
                    s += A[r, d] * B[j, d]
        return s
    return device(dot)


@functools.lru_cache(maxsize=None)
def tile_axpy(DB: int):
    """Device function axpy(row, a, A, r, D): row[d] += a A[r, d] for d < D (A a zero-padded shared tile)."""
    G = group(DB)

    def axpy(row, a, A, r, D):
        for d0 in range(0, DB, G):
            if d0 < D:
                for d in range(d0, d0 + G):
                    row[d] += a * A[r, d]
    return device(axpy)


def micro_tile(ROWS: int, COLS: int, NT: int) -> tuple:
    """(TY, TX, MR, MC): a ROWS x COLS block split over NT threads as register tiles.  Thread tid is (ty, tx) =
    (tid // TX, tid % TX) and owns the MR x MC elements (ty + TY m, tx + TX j), m < MR, j < MC (strided, so that
    a warp's shared reads of one column are a few broadcast rows and of one row are consecutive words).  A thread
    is live when ty < min(TY, ROWS) (more threads than rows: the rest idle).  With m, j compile-time loop
    indices the tile stays in registers; a product over k then reads MR + MC shared values for MR MC FMAs (the
    CUDA-core rung's rt_mm; one element per thread would read two per FMA)."""
    for d in (ROWS, COLS, NT):
        if d < 1 or d & (d - 1):
            raise ValueError(f"micro_tile: sizes must be powers of two (ROWS={ROWS}, COLS={COLS}, NT={NT})")
    TX = min(COLS, 16, NT)
    TY = NT // TX
    return TY, TX, cdiv(ROWS, TY), COLS // TX


@functools.lru_cache(maxsize=None)
def tile_loader(ROWS: int, COLS: int, NT: int, acc):
    """Device function load(dst, src, n, t0, t1, p0, c0, D, rev, mult): the shared tile dst[j, d] =
    mult * src[n, t, c0 + d] for j < ROWS, d < COLS, with t the position p0 + j of the window [t0, t1)
    (t0 + p0 + j, or t1 - 1 - (p0 + j) when rev), zero past the window and past column D (the actual head
    dim); the elements are strided over the block's NT threads (coalesced reads), so every thread of the
    block calls it.  (A tile of rows r0.. of the whole sequence: t0, t1, p0 = 0, T, r0.)

    Cost.  The element's row and column are uint32 (``x // COLS`` a shift for a power of two) and the global and
    shared indices unsigned (``UIDX``): Numba adds the negative-index wrap-around to each signed index it cannot
    prove >= 0 and divides signed int64 by COLS with a rounding fix-up, so the run-time ``range(tid, ROWS COLS,
    NT)`` this replaces cost ~65 SASS instructions per element (docs/kernels/linear.md, "why 3x"), now ~20.
    Up to ``UNROLL_PASSES`` passes over the tile (the chunk core's 4 to 8) are a compile-time loop, unrolled,
    so a thread's global loads issue back to back; more (softmax's 64 x 64 tiles on 64 threads) a ``while``
    loop, so the code does not grow with the tile."""
    ZERO = acc(0)
    N_EL = ROWS * COLS
    PASSES = cdiv(N_EL, NT)
    UNROLL = PASSES <= UNROLL_PASSES
    EXACT = N_EL % NT == 0                 # every pass covers NT elements: no tail test
    U32, U64, I64 = numba.uint32, UIDX, numba.int64
    UCOLS, UNT, UN_EL = U32(COLS), U32(NT), U32(N_EL)

    def put(dst, src, x, n, t0, t1, p0, c0, D, rev, mult):
        uj = x // UCOLS                                # the element x: row uj, column ud of the tile
        ud = x - uj * UCOLS
        val = ZERO
        r = p0 + I64(uj)
        col = c0 + I64(ud)
        if t0 + r < t1 and col < D:
            t = t1 - 1 - r if rev else t0 + r
            val = acc(src[U64(n), U64(t), U64(col)]) * mult
        dst[uj, ud] = val
    put = device(put)

    def load(dst, src, n, t0, t1, p0, c0, D, rev, mult):
        x = U32(cuda.threadIdx.x)
        if UNROLL:
            for _ in range(PASSES):
                if EXACT or x < UN_EL:
                    put(dst, src, x, n, t0, t1, p0, c0, D, rev, mult)
                x += UNT
        else:
            while x < UN_EL:
                put(dst, src, x, n, t0, t1, p0, c0, D, rev, mult)
                x += UNT
    return device(load)


@dataclass(frozen=True)
class CompileStats:
    kernels: int        # kernel dispatchers made in this process
    hits: int           # signatures loaded from the disk cache
    misses: int         # signatures compiled here (and saved to the cache)


def compile_stats() -> CompileStats:
    hits = misses = 0
    for k in KERNELS:
        st = getattr(k, "stats", None)           # the CUDA simulator's kernels have none
        if st is not None:
            hits += sum(st.cache_hits.values())
            misses += sum(st.cache_misses.values())
    return CompileStats(len(KERNELS), hits, misses)

