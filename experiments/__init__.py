"""Experiments of docs/spec.md section 6, run from the CLI as ``experiment NAME``:

- ``sparsity``          attention sparsity S = E|f|/sqrt(E f^2): theory by quadrature vs rows of the ops
- ``zeros-contrastive`` one ZeroS layer fits o = v_1 - v_2; softmax / non-negative linear attention cannot
- ``zeros-dilution``    the uniform 1/t term against ZeroS's reweighted zero-sum residuals as T grows
- ``mqar``              small models trained on multi-query associative recall: does each attention recall?

Each module has ``run(out, quick, backend, seed, progress_bar) -> dict`` (writes NAME.json and NAME*.png under
``out``) and ``summary(result) -> str`` (the table the CLI prints).
"""

EXPERIMENTS = {
    "sparsity": "experiments.sparsity",
    "zeros-contrastive": "experiments.zeros_contrastive",
    "zeros-dilution": "experiments.zeros_dilution",
    "mqar": "experiments.mqar",
}
