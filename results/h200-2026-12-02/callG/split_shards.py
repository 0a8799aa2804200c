"""Split the GPU tests' node ids (stdin: pytest --collect-only -q output) into N shard files by test file,
greedy on a weighted count (Numba files weigh more: each shard process compiles its own kernels)."""
import collections, sys
n, outdir = int(sys.argv[1]), sys.argv[2]
ids = [l.strip() for l in sys.stdin if "::" in l]
byfile = collections.OrderedDict()
for i in ids:
    byfile.setdefault(i.split("::")[0], []).append(i)
# split very large files into pieces of at most 80 ids
pieces = []
for f, v in byfile.items():
    w = 3.0 if "numba" in f else 1.0
    for j in range(0, len(v), 80):
        pieces.append((w * len(v[j:j + 80]) + (20 if "numba" in f else 2), v[j:j + 80]))
pieces.sort(key=lambda p: -p[0])
loads = [0.0] * n
shards = [[] for _ in range(n)]
for w, v in pieces:
    k = loads.index(min(loads))
    loads[k] += w
    shards[k] += v
for k, s in enumerate(shards):
    open(f"{outdir}/s{k}", "w").write("\n".join(s) + "\n")
print(f"{len(ids)} tests in {n} shards, loads {[round(x) for x in loads]}")
