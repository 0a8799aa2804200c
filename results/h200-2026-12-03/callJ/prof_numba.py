"""Profile Numba's warm-cache first call: cold child fills the cache, then a child under cProfile."""
import cProfile, io, json, os, pstats, subprocess, sys, tempfile
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
out = sys.argv[1]; ops = sys.argv[2:] or ["linear"]
os.makedirs(out, exist_ok=True)
CHILD = r'''
import cProfile, pstats, io, sys, json, time
sys.path.insert(0, "{root}"); sys.path.insert(0, "{root}/scripts")
import first_call
pr = cProfile.Profile(); t = time.perf_counter(); pr.enable()
r = first_call.child("{op}", "numba", 256, 64, "float32")
pr.disable(); r["total_s"] = time.perf_counter() - t
s = io.StringIO(); st = pstats.Stats(pr, stream=s); st.sort_stats("cumulative").print_stats(70)
st.sort_stats("tottime").print_stats(40)
open("{out}/prof_{op}_{tag}.txt", "w").write(json.dumps(r) + "\n" + s.getvalue())
print(json.dumps(r))
'''
for op in ops:
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NUMBA_CACHE_DIR=tmp + "/numba", CUPY_CACHE_DIR=tmp + "/cupy")
        for tag in ("cold", "warm", "warm2"):
            p = subprocess.run([sys.executable, "-X", "importtime", "-c", CHILD.format(root=ROOT, op=op, out=out, tag=tag)],
                               env=env, capture_output=True, text=True, timeout=120)
            open(f"{out}/importtime_{op}_{tag}.txt", "w").write(p.stderr[-200000:])
            print(op, tag, p.returncode, p.stdout.strip()[-300:], flush=True)
