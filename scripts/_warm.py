"""Compile every tensor-core kernel group in parallel processes (CuPy caches the binaries on disk)."""
import multiprocessing as mp
import sys
import time


def comp(key):
    from kernels.cupy import _chunked_mma as m
    t = time.time()
    try:
        if key == "common":
            for e in m.COMMON:
                m._common(e)
        else:
            for e in m.GROUPS[key]:
                m._kern(key[0], key[1], e)
    except Exception as e:                      # report, never hang
        return key, f"FAILED {type(e).__name__}: {str(e)[:300]}"
    return key, round(time.time() - t, 1)


if __name__ == "__main__":
    sys.path.insert(0, ".")
    from kernels.cupy import _chunked_mma as m
    with mp.get_context("spawn").Pool(5) as p:
        for r in p.imap_unordered(comp, list(m.GROUPS) + ["common"]):
            print("compiled", r, flush=True)
