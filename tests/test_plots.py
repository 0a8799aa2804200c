"""Roofline and scaling PNGs from a small synthetic result file: what each figure draws (points, lines,
ceilings, guides, labels) against the numbers in the file, and the PNG's size."""
import json

import matplotlib.figure
import matplotlib.image as mpimg
import numpy as np
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


@pytest.fixture
def saved(monkeypatch):
    """Every matplotlib figure written to a file, in order (the figure keeps its artists after plt.close)."""
    figures = []
    savefig = matplotlib.figure.Figure.savefig

    def record(fig, *args, **kwargs):
        figures.append(fig)
        return savefig(fig, *args, **kwargs)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)
    return figures


def _ok_rows(pass_=None, dtype=None, op=None):
    return [r for r in synthetic()["results"] if r["status"] == "ok" and (pass_ is None or r["pass"] == pass_)
            and (dtype is None or r["dtype"] == dtype) and (op is None or r["op"] == op)]


def _points(ax) -> list:
    return sorted(tuple(map(float, xy)) for c in ax.collections for xy in c.get_offsets())


def _check_roofline_panel(ax, dtype, pass_):
    """One point per ok measurement at (intensity, achieved TFLOP/s), the memory-bound slope bw x intensity
    up to the dtype's matmul ceiling, that ceiling as a horizontal line, T labels."""
    rows = _ok_rows(pass_, dtype)
    assert ax.get_title() == f"{dtype} inputs"
    assert _points(ax) == pytest.approx(sorted((r["intensity"], r["tflops"]) for r in rows))
    peak = synthetic()["meta"]["ceilings"]["flops"][dtype]
    bound = next(line for line in ax.lines if line.get_label().startswith("memory bound"))
    x, y = np.asarray(bound.get_xdata()), np.asarray(bound.get_ydata())
    np.testing.assert_allclose(y, np.minimum(3.0e12 * x, peak) / 1e12, rtol=1e-12)
    assert y.max() == pytest.approx(peak / 1e12) and y.min() < peak / 1e12
    flat = [line.get_ydata()[0] for line in ax.lines if line is not bound]
    assert flat == [pytest.approx(peak / 1e12)]
    labels = sorted(t.get_text() for t in ax.texts if "matmul" not in t.get_text())
    want = sorted({1024: "1k", 4096: "4k", 16384: "16k"}[r["T"]] + ("" if pass_ else f" {r['pass']}") for r in rows)
    assert labels == want


def test_roofline_png(result_file, tmp_path, saved):
    out = api.plot_roofline(result_file, str(tmp_path / "roof.png"), pass_="fwd")
    assert _size(out) == (plots.FIGSIZE[0] * plots.DPI, plots.FIGSIZE[1] * plots.DPI)
    axes = saved[-1].axes
    assert [ax.get_title() for ax in axes] == ["float16 inputs", "float32 inputs"]
    for ax, dtype in zip(axes, ("float16", "float32")):
        _check_roofline_panel(ax, dtype, "fwd")
    assert "Synthetic GPU" in saved[-1]._suptitle.get_text()
    plots.roofline(synthetic(), str(tmp_path / "roof_all.png"))         # all passes: both passes' points
    for ax, dtype in zip(saved[-1].axes, ("float16", "float32")):
        _check_roofline_panel(ax, dtype, None)


def _check_scaling_panel(ax, op, pass_, dtype):
    """One line per measured line: median ms against T; O(T) and O(T^2) guides through the panel's first
    point."""
    rows = _ok_rows(pass_, dtype, op)
    assert ax.get_title() == f"{op} attention"
    lines = {line.get_label(): line for line in ax.lines}
    measured = {r["line"] for r in rows}
    assert set(lines) == measured | {"O(T)", "O(T^2)"}
    for name in measured:
        rs = sorted((r for r in rows if r["line"] == name), key=lambda r: r["T"])
        assert list(lines[name].get_xdata()) == [r["T"] for r in rs]
        assert list(lines[name].get_ydata()) == pytest.approx([r["ms_median"] for r in rs])
    t0 = min(rows, key=lambda r: (r["T"], r["ms_median"]))
    for name, power in (("O(T)", 1), ("O(T^2)", 2)):
        Ts = np.asarray(lines[name].get_xdata(), float)
        np.testing.assert_allclose(lines[name].get_ydata(), t0["ms_median"] * (Ts / t0["T"]) ** power, rtol=1e-12)


def test_scaling_png(result_file, tmp_path, saved):
    out = api.plot_scaling(str(tmp_path / "scal.png"), json_path=result_file, pass_="fwdbwd", dtype="float16")
    assert _size(out) == (plots.FIGSIZE[0] * plots.DPI, plots.FIGSIZE[1] * plots.DPI)
    visible = [ax for ax in saved[-1].axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["softmax attention", "linear attention", "zeros attention"]
    for ax, op in zip(visible, ("softmax", "linear", "zeros")):
        _check_scaling_panel(ax, op, "fwdbwd", "float16")


def test_plots_of_an_empty_result(tmp_path, saved):
    empty = {"meta": {}, "results": []}
    plots.roofline(empty, str(tmp_path / "r.png"))
    plots.scaling(empty, str(tmp_path / "s.png"))
    for fig in saved:
        axes = [ax for ax in fig.axes if ax.get_visible()]
        assert len(axes) == 1 and not _points(axes[0])
        assert "no successful measurements" in [t.get_text() for t in axes[0].texts]
    assert _size(str(tmp_path / "r.png")) == _size(str(tmp_path / "s.png")) == \
        (plots.FIGSIZE[0] * plots.DPI, plots.FIGSIZE[1] * plots.DPI)


def test_cli_plots(result_file, tmp_path, saved):
    from cli import main
    r = CliRunner().invoke(main, ["roofline", result_file, "--out", str(tmp_path / "a.png"), "--dtype", "float32"])
    assert r.exit_code == 0, r.output
    assert [ax.get_title() for ax in saved[-1].axes] == ["float32 inputs"]     # --dtype: one panel, its points
    _check_roofline_panel(saved[-1].axes[0], "float32", None)
    r = CliRunner().invoke(main, ["scaling", "--json", result_file, "--out", str(tmp_path / "b.png")])
    assert r.exit_code == 0, r.output
    visible = [ax for ax in saved[-1].axes if ax.get_visible()]           # defaults: fwd, first dtype measured
    for ax, op in zip(visible, ("softmax", "linear", "zeros")):
        _check_scaling_panel(ax, op, "fwd", "float16")
    assert _size(str(tmp_path / "a.png"))[1] == _size(str(tmp_path / "b.png"))[1] == plots.FIGSIZE[1] * plots.DPI
