#!/usr/bin/env python
"""First-call time of every op and GPU backend in a fresh process: cold (empty kernel caches), warm (the
caches the cold run filled) and, with --after-warmup, after ``cli.py warmup`` into an empty cache.

    python scripts/first_call.py                          # every op, cupy and numba, T=256 D=64 float32
    python scripts/first_call.py --backend cupy --op softmax --after-warmup --json first_call.json

Each measurement is a new Python process with its own cache directories (``CUPY_CACHE_DIR`` and
``NUMBA_CACHE_DIR`` under a temporary folder, one per backend and op).  The child reports the time to import
the library and create the inputs on the device, the first ``wb.vjp`` + pullback (synchronised), and a second
one; ``compiled`` counts the files the run added to the kernel caches (a CuPy compile adds one file, a Numba
one an index and a data file; 0 after a complete warm-up) and ``new_files`` names them (up to 8, relative to
the cache).  The output gradient is copied from the host (``cupy.asarray``), not made by a CuPy kernel
(``ones_like`` would compile CuPy's fill kernel into the cache: a compile of the script's, not the
library's).  Exits 1 if any child failed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from workbench.opspec import OPS  # noqa: E402  (imports neither Numba nor CuPy)


def child(op: str, backend: str, T: int, D: int, dtype: str) -> dict:
    t0 = time.perf_counter()
    sys.path.insert(0, ROOT)
    import cupy as cp
    import numpy as np
    import workbench as wb
    from workbench.inputs import random_inputs
    xs = [cp.asarray(a) for a in random_inputs(op, (1, 4), T, D, D, dtype, seed=0)]
    cp.cuda.Device().synchronize()
    t1 = time.perf_counter()
    times = []
    for _ in range(2):
        a = time.perf_counter()
        out, pullback = wb.vjp(wb.PUBLIC_OPS[op], *xs, backend=backend)
        pullback(cp.asarray(np.ones(out.shape, out.dtype)))
        cp.cuda.Device().synchronize()
        times.append(time.perf_counter() - a)
    return dict(import_s=t1 - t0, first_s=times[0], second_s=times[1])


def _files(d: str) -> set:
    return {os.path.relpath(os.path.join(root, f), d) for root, _, files in os.walk(d) for f in files}


def measure(op: str, backend: str, cache: str, args) -> dict:
    env = dict(os.environ, CUPY_CACHE_DIR=os.path.join(cache, "cupy"), NUMBA_CACHE_DIR=os.path.join(cache, "numba"))
    before = _files(cache)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", op, backend, str(args.T), str(args.D),
                        args.dtype], env=env, capture_output=True, text=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        return dict(error=(p.stderr.strip().splitlines() or ["?"])[-1][:300], process_s=wall)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    new = sorted(_files(cache) - before)
    return dict(out, process_s=wall, compiled=len(new), new_files=new[:8])


def warmup(op: str, backend: str, cache: str, args) -> dict:
    env = dict(os.environ, CUPY_CACHE_DIR=os.path.join(cache, "cupy"), NUMBA_CACHE_DIR=os.path.join(cache, "numba"))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, os.path.join(ROOT, "cli.py"), "warmup", "--op", op, "--backend", backend],
                       env=env, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    return dict(warmup_s=time.perf_counter() - t0, warmup_rc=p.returncode,
                warmup_tail=(p.stdout.strip().splitlines() or [""])[-1][:200])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--op", action="append", choices=OPS)
    ap.add_argument("--backend", action="append", choices=("cupy", "numba"))
    ap.add_argument("--T", type=int, default=256)
    ap.add_argument("--D", type=int, default=64)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--after-warmup", action="store_true", help="also: cli.py warmup into an empty cache, then a first call")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per child process")
    ap.add_argument("--json", help="write the measurements here")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        op, backend, T, D, dtype = args.child
        print(json.dumps(child(op, backend, int(T), int(D), dtype)))
        return 0
    rows, bad = [], 0
    with tempfile.TemporaryDirectory(prefix="first_call_") as tmp:
        for backend in args.backend or ("cupy", "numba"):
            for op in args.op or OPS:
                cache = os.path.join(tmp, f"{backend}-{op}")
                row = dict(backend=backend, op=op, T=args.T, D=args.D, dtype=args.dtype,
                           cold=measure(op, backend, cache, args), warm=measure(op, backend, cache, args))
                if args.after_warmup:
                    cache2 = cache + "-warmup"
                    row["warmup"] = warmup(op, backend, cache2, args)
                    row["after_warmup"] = measure(op, backend, cache2, args)
                bad += sum("error" in v for v in row.values() if isinstance(v, dict))
                bad += row.get("warmup", {}).get("warmup_rc", 0) != 0
                rows.append(row)
                print(_line(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(rows=rows, python=sys.version.split()[0]), f, indent=1)
    return 1 if bad else 0


def _line(row: dict) -> str:
    def cell(m):
        if m is None:
            return "-"
        if "error" in m:
            return f"ERROR {m['error']}"
        return (f"first {m['first_s']:.2f} s (import {m['import_s']:.2f} s, second {m['second_s'] * 1e3:.1f} ms, "
                f"process {m['process_s']:.1f} s, compiled {m['compiled']})")
    w = row.get("warmup")
    extra = (f" | warmup {w['warmup_s']:.0f} s rc={w['warmup_rc']} -> after warmup: {cell(row['after_warmup'])}"
             if w else "")
    return f"{row['backend']:5s} {row['op']:8s} cold: {cell(row['cold'])} | warm: {cell(row['warm'])}{extra}"


if __name__ == "__main__":
    sys.exit(main())
