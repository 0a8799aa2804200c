"""Timing experiments against the roofline and public peers.

    grid.py      benchmarks as data: named grids of cells (op, T, D, dtype, causal) and the lines to compare
    costs.py     FLOP and minimum-byte models per op, form and pass (the conventions are documented there)
    timing.py    CUDA-event timing (CuPy or torch) and host timing, median and quartiles
    ceilings.py  copy bandwidth and matmul FLOP/s measured on the device, cached per device name
    lines.py     our registered variants prepared for timing (forward, backward on a saved ctx, both)
    peers.py     torch SDPA (flash, cuDNN, efficient), fla chunk_linear_attn / chunk_simple_gla, ZeroS prefix-sum
    harness.py   runs a grid: every cell, line and pass in its own try/except; ratios against the baseline
    report.py    tables (tabulate), JSON and CSV
    plots.py     roofline and scaling PNGs
    api.py       what the commands call;  commands.py  the click commands bench, roofline, scaling
"""
