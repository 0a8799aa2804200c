"""Every GPU test in parallel shards: `pytest -m gpu` split by test file over N processes.

The GPU tests are mostly host-bound (small shapes, kernels compiled on first use), so on a machine with many
cores N processes finish in a fraction of one process's time (an H200 with 16 cores: 1236 tests in about 4
minutes with 9 shards, against more than 15 in one process).  Each shard gets whole files (a Numba file's
kernels are then compiled by one process only; files of more than ``--piece`` tests are cut into pieces),
one BLAS thread, and its own Numba cache directory; the shards are balanced on the number of tests, Numba
files weighing ``--numba-weight`` times more (their tests compile more).

    python scripts/gpu_test_shards.py --jobs 9 --out out/gpu-tests        # shard logs s0.txt ... + summary
    python scripts/gpu_test_shards.py --jobs 4 --out out/t -- -k chunked  # extra pytest arguments after --

Prints each shard's last line, every FAILED/ERROR line, and the totals ("N passed, M failed, K errors in S
s"); exits 1 when a test failed or errored, a shard did not finish, or nothing ran.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Shard:
    ids: tuple          # pytest node ids
    load: float         # the weighted number of tests


def split(node_ids, jobs: int, piece: int = 80, numba_weight: float = 3.0, seconds: dict | None = None) -> list:
    """Node ids into at most ``jobs`` shards of whole files (files over ``piece`` ids cut into pieces),
    largest piece first onto the lightest shard.  Every id lands in exactly one shard; empty shards are
    dropped.  ``seconds`` (node id -> seconds, from an earlier run: ``measured_seconds``) weighs each id by
    its time instead of counting it; ids it lacks weigh the median of those it has."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1 (got {jobs})")
    by_file: dict = {}
    for i in node_ids:
        by_file.setdefault(i.split("::", 1)[0], []).append(i)
    unseen = sorted(seconds.values())[len(seconds) // 2] if seconds else None     # an id it lacks: the median
    pieces = []
    for f, ids in by_file.items():
        w = numba_weight if "numba" in os.path.basename(f) else 1.0
        for j in range(0, len(ids), piece):
            chunk = ids[j:j + piece]
            load = sum(seconds.get(i, unseen) for i in chunk) if seconds else w * len(chunk)
            pieces.append((load, chunk))
    pieces.sort(key=lambda p: -p[0])
    loads, shards = [0.0] * jobs, [[] for _ in range(jobs)]
    for w, chunk in pieces:
        k = loads.index(min(loads))
        loads[k] += w
        shards[k] += chunk
    return [Shard(tuple(s), l) for s, l in zip(shards, loads) if s]


_SECONDS = re.compile(r" in ([0-9.]+)s")


def measured_seconds(folder: str) -> dict:
    """Node id -> seconds from an earlier run's shard folder: each test's own time where the shard wrote a JUnit
    report (``sK.xml``), else the shard's time (its pytest summary line) spread evenly over the ids it ran
    (``sK.ids`` + ``sK.txt``)."""
    out: dict = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".xml"):
            out.update(_junit_seconds(os.path.join(folder, name)))
            continue
        if not name.endswith(".ids"):
            continue
        ids = [i for i in open(os.path.join(folder, name)).read().split() if i]
        log = os.path.join(folder, name[:-4] + ".txt")
        lines = open(log).read().splitlines() if os.path.exists(log) else []
        m = _SECONDS.search(lines[-1]) if lines else None
        if ids and m and not os.path.exists(log[:-4] + ".xml"):
            out.update(dict.fromkeys(ids, float(m.group(1)) / len(ids)))
    return out


def _junit_seconds(path: str) -> dict:
    """Node id -> seconds of a pytest JUnit report (classname "tests.test_x" + name "t[...]")."""
    import xml.etree.ElementTree as ET
    out = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        cls, name = case.get("classname", ""), case.get("name", "")
        if cls and name:
            out[cls.replace(".", "/") + ".py::" + name] = float(case.get("time", 0.0))
    return out


_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|deselected)")


def counts(last_line: str) -> dict:
    """pytest's summary line -> {"passed": n, "failed": n, "error": n, ...}."""
    out: dict = {}
    for n, kind in _COUNT.findall(last_line):
        kind = "error" if kind.startswith("error") else kind
        out[kind] = out.get(kind, 0) + int(n)
    return out


def collect(extra) -> list:
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:cacheprovider",
                        *extra], cwd=ROOT, capture_output=True, text=True)
    return [line.strip() for line in r.stdout.splitlines() if "::" in line]


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="shards run at once")
    ap.add_argument("--out", required=True, help="folder for the shard logs (created)")
    ap.add_argument("--timeout", type=float, default=1200.0, help="seconds per shard")
    ap.add_argument("--piece", type=int, default=80, help="most tests of one file in one piece")
    ap.add_argument("--numba-weight", type=float, default=3.0, help="weight of a Numba test")
    ap.add_argument("--times", help="an earlier run's --out folder: balance the shards on its measured times (JUnit reports sK.xml where written)")
    a = ap.parse_args(argv)
    seconds = measured_seconds(a.times) if a.times else None
    if a.times and not seconds:
        print(f"gpu_test_shards: no shard times under {a.times}", file=sys.stderr)
        return 1
    ids = collect(extra)
    if not ids:
        print("gpu_test_shards: no GPU test collected", file=sys.stderr)
        return 1
    shards = split(ids, a.jobs, a.piece, a.numba_weight, seconds)
    os.makedirs(a.out, exist_ok=True)
    print(f"{len(ids)} GPU tests in {len(shards)} shards (loads {[round(s.load) for s in shards]})", flush=True)
    t0, procs = time.time(), []
    for k, s in enumerate(shards):
        ids_file = os.path.join(a.out, f"s{k}.ids")
        with open(ids_file, "w") as f:
            f.write("\n".join(s.ids) + "\n")
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   NUMBA_CACHE_DIR=tempfile.mkdtemp(prefix=f"nbc-s{k}-"))
        log = open(os.path.join(a.out, f"s{k}.txt"), "w")
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfE", "--tb=short", "-p", "no:cacheprovider",
               f"--junitxml={os.path.join(a.out, f's{k}.xml')}", *s.ids]
        procs.append((k, subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    total, bad = {}, False
    for k, p, log in procs:
        try:
            rc = p.wait(timeout=max(1.0, a.timeout - (time.time() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            rc = None
        log.close()
        lines = open(os.path.join(a.out, f"s{k}.txt")).read().splitlines()
        last = lines[-1] if lines else ""
        c = counts(last) if rc is not None else {}
        for kind, n in c.items():
            total[kind] = total.get(kind, 0) + n
        finished = rc is not None and bool(c)
        bad |= not finished or rc not in (0, 5)
        print(f"s{k}: {last if finished else 'did not finish (time limit)' if rc is None else f'rc={rc}: {last}'}")
        for line in lines:
            if line.startswith(("FAILED ", "ERROR ")):
                print(f"  {line}")
    summary = ", ".join(f"{total.get(k, 0)} {k}" for k in ("passed", "failed", "error", "skipped"))
    print(f"{summary} in {time.time() - t0:.0f} s")
    return 1 if bad or total.get("failed") or total.get("error") or not total.get("passed") else 0


if __name__ == "__main__":
    sys.exit(main())
