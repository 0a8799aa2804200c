"""callI: the failing bfloat16 anchored cells of callH (state, log decays in [-30, 0]) with every output's error,
for the anchored core (cupy:chunked_mma_dqa), the float32 core (cupy:chunked_mma) and float16 dqa."""
import json, sys, time
from workbench.check import compare
out = []
for T, lead in ((1024, (1, 2)), (4096, (2,)), (4097, (1,))):
    for variant, dtype in (("chunked_mma_dqa", "bfloat16"), ("chunked_mma", "bfloat16"), ("chunked_mma_dqa", "float16")):
        for seed in (0, 1):
            for state in (True, False):
                t = time.time()
                r = compare("decayed", f"cupy:{variant}", lead, T, 64, 64, dtype, seed=seed, log_decay_range=(-30.0, 0.0), state=state)
                row = dict(T=T, lead=lead, variant=variant, dtype=dtype, seed=seed, state=state, s=time.time() - t,
                           **{k: v for k, v in r.items()})
                out.append(row)
                print(json.dumps(row, default=str), flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1, default=str)
