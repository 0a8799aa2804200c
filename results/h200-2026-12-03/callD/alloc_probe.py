"""Does cupy.empty / a launch block the host while the GPU is busy?  Host time of cupy.empty(4 MB) and of an
empty kernel launch, with the GPU idle and while a long kernel runs."""
import time, statistics, json
import cupy as cp
spin = cp.RawKernel(r'''extern "C" __global__ void spin(long long n){ long long t0 = clock64(); while (clock64() - t0 < n) {} }''', "spin")
empty = cp.RawKernel(r'''extern "C" __global__ void e(float* p){ if (p == 0) p[0] = 0; }''', "e")
buf = cp.empty(16, cp.float32)
spin((1,), (1,), (cp.int64(1000),)); empty((1,), (32,), (buf,)); cp.cuda.Device().synchronize()
res = {}
for busy in (False, True):
    for what in ("empty4MB", "empty16MB", "launch", "alloc4MB"):
        ts = []
        for _ in range(200):
            if busy:
                spin((1,), (1,), (cp.int64(2_000_000),))      # ~1 ms at 1.98 GHz
            t0 = time.perf_counter()
            if what == "empty4MB":
                x = cp.empty(1 << 20, cp.float32)
            elif what == "empty16MB":
                x = cp.empty(1 << 22, cp.float32)
            elif what == "alloc4MB":
                x = cp.cuda.alloc(4 << 20)
            else:
                empty((1,), (32,), (buf,))
            ts.append((time.perf_counter() - t0) * 1e6)
            cp.cuda.Device().synchronize()
        res[f"{what} busy={busy}"] = (statistics.median(ts), max(ts))
print(json.dumps(res, indent=1))
