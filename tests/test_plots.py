"""Roofline and scaling PNGs from a small synthetic result file."""
import json

import matplotlib.image as mpimg
import pytest
from click.testing import CliRunner

from workbench.bench import api, plots


def _row(op, line, kind, T, dtype, pass_, ms, flops, nbytes, compute=None):
    return {"op": op, "line": line, "kind": kind, "T": T, "Dk": 64, "Dv": 64, "dtype": dtype, "causal": True,
            "pass": pass_, "status": "ok", "ms_median": ms, "flops": flops, "bytes": nbytes,
            "intensity": flops / nbytes, "tflops": flops / ms / 1e9, "gbps": nbytes / ms / 1e6,
            "compute": compute or dtype}


def synthetic() -> dict:
    rows = []
    for T in (1024, 4096, 16384):
        for dtype in ("float16", "float32"):
            for pass_ in ("fwd", "fwdbwd"):
                k = 1 if pass_ == "fwd" else 3.5
                rows.append(_row("softmax", "cupy:flash", "ours", T, dtype, pass_, k * 1e-6 * T * T / 64,
                                 k * 2e3 * T * T, k * 4e3 * T))
                rows.append(_row("softmax", "peer:sdpa-flash", "peer", T, dtype, pass_, k * 0.7e-6 * T * T / 64,
                                 k * 2e3 * T * T, k * 4e3 * T))
                rows.append(_row("linear", "cupy:chunked", "ours", T, dtype, pass_, k * 1e-3 * T / 64,
                                 k * 1e5 * T, k * 4e3 * T))
                rows.append(_row("zeros", "peer:zeros-prefix-torch", "peer", T, dtype, pass_, k * 5e-3 * T / 64,
                                 k * 3e5 * T, k * 5e3 * T))
    rows.append(dict(rows[0], status="error", line="cupy:broken"))
    return {"meta": {"device": "Synthetic GPU", "grid": {"name": "synthetic", "device": "gpu"},
                     "ceilings": {"bw": 3.0e12, "flops": {"float32": 52e12, "tf32": 371e12, "float16": 658e12}}},
            "results": rows, "skipped_cells": []}


@pytest.fixture
def result_file(tmp_path):
    p = tmp_path / "bench.json"
    p.write_text(json.dumps(synthetic()))
    return str(p)


def _size(path):
    img = mpimg.imread(path)
    return img.shape[1], img.shape[0]


def test_roofline_png(result_file, tmp_path):
    out = api.plot_roofline(result_file, str(tmp_path / "roof.png"), pass_="fwd")
    assert _size(out) == (plots.FIGSIZE[0] * plots.DPI, plots.FIGSIZE[1] * plots.DPI)
    all_passes = plots.roofline(synthetic(), str(tmp_path / "roof_all.png"))
    assert (tmp_path / "roof_all.png").stat().st_size > 20_000 and all_passes


def test_scaling_png(result_file, tmp_path):
    out = api.plot_scaling(str(tmp_path / "scal.png"), json_path=result_file, pass_="fwdbwd", dtype="float16")
    assert _size(out) == (plots.FIGSIZE[0] * plots.DPI, plots.FIGSIZE[1] * plots.DPI)
    assert (tmp_path / "scal.png").stat().st_size > 20_000


def test_plots_of_an_empty_result(tmp_path):
    empty = {"meta": {}, "results": []}
    plots.roofline(empty, str(tmp_path / "r.png"))
    plots.scaling(empty, str(tmp_path / "s.png"))
    assert (tmp_path / "r.png").stat().st_size > 0 and (tmp_path / "s.png").stat().st_size > 0


def test_cli_plots(result_file, tmp_path):
    from cli import main
    r = CliRunner().invoke(main, ["roofline", result_file, "--out", str(tmp_path / "a.png"), "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["scaling", "--json", result_file, "--out", str(tmp_path / "b.png")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.png").stat().st_size > 0
