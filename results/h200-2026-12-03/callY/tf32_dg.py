"""callY: d log_decay error of plain TF32 (split 1) at T = 300, L = 2: the default fused walker against the dq fold."""
import sys
sys.path.insert(0, "tests")
from test_cupy_chunked_mma import run_case  # noqa: E402
for seed in (0, 1, 2, 3):
    for dkdv in ("fused", "dqfold"):
        for split in (1, 3):
            r = run_case("float32", split, 1, [0, 300], 64, 64, True, True, 2, True, seed=seed, stages=1, dkdv=dkdv)
            print(f"seed {seed} split {split} {dkdv:7s}", "  ".join(f"{k} {v[0]:.2e}" for k, v in r.items()), flush=True)
