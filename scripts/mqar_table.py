"""README's tables of an MQAR sweep from its results file: final held-out accuracy per mixer and (T, pairs)
at every width, the smallest width reaching 90% accuracy, and the difference task's accuracies, in Markdown.

    python scripts/mqar_table.py results/experiments/mqar_cpu.json
    python scripts/mqar_table.py out/mqar-gpu/mqar_gpu.json

Exit status: 0, or 2 when the file cannot be read or holds no run.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import mqar  # noqa: E402


def main(argv) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        res = mqar.load(argv[0])
    except (OSError, ValueError, KeyError) as e:
        print(f"mqar_table: cannot read {argv[0]}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if not res.get("runs"):
        print(f"mqar_table: {argv[0]} holds no run", file=sys.stderr)
        return 2
    print(mqar.markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
