"""PNG plots from a bench result: the roofline and time against T.

* ``roofline``: log-log, achieved TFLOP/s against arithmetic intensity (FLOP per minimum byte) of every
  ok measurement (one labelled point each: colour = line, marker = op, label = T in thousands), under the
  bandwidth slope ``bw x intensity`` and one horizontal ceiling per measured dtype.
* ``scaling``: one panel per op, log-log median time (ms) against T for every line, with O(T) and O(T^2)
  guide lines through the first point of the panel.
"""
from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from ..opspec import OPS  # noqa: E402

MARKERS = dict(zip(OPS, "os^Dv<>"))         # one marker per op, in the op table's order
FIGSIZE = (12, 8)
DPI = 100


def _ok(result: dict, pass_=None, dtype=None, op=None) -> list:
    return [r for r in result["results"] if r.get("status") == "ok" and r.get("intensity")
            and (pass_ is None or r["pass"] == pass_) and (dtype is None or r["dtype"] == dtype)
            and (op is None or r["op"] == op)]


def _colors(keys) -> dict:
    keys = sorted(keys)
    cmap, n = (plt.get_cmap("tab10"), 10) if len(keys) <= 10 else (plt.get_cmap("tab20"), 20)
    return {k: cmap(i % n) for i, k in enumerate(keys)}


def _t_label(T: int) -> str:
    return f"{T / 1024:g}k" if T >= 1024 and T % 256 == 0 else str(T)


def _title(result: dict, what: str, pass_, dtype) -> str:
    m = result.get("meta", {})
    sel = ", ".join(x for x in (f"pass {pass_}" if pass_ else "all passes",
                                f"{dtype}" if dtype else "all dtypes") if x)
    return f"{what} -- {m.get('device') or 'unknown device'} (grid {m.get('grid', {}).get('name', '?')}; {sel})"


def roofline(result: dict, path: str, pass_: str = None, dtype: str = None, op: str = None) -> str:
    """Write the roofline PNG (one panel per dtype, with that dtype's ceilings); returns the path."""
    rows = _ok(result, pass_, dtype, op)
    ceil = result.get("meta", {}).get("ceilings") or {}
    dtypes = sorted({r["dtype"] for r in rows}) or [dtype or "(none)"]
    fig, axes = plt.subplots(1, len(dtypes), figsize=(FIGSIZE[0] if len(dtypes) < 3 else 16, FIGSIZE[1]),
                             dpi=DPI, squeeze=False, sharey=True)
    colors = _colors({r["line"] for r in rows})
    xs = [r["intensity"] for r in rows] or [1.0]
    x_lo, x_hi = min(xs) / 3, max(xs) * 3
    bw = ceil.get("bw")
    all_peaks = {k: v for k, v in (ceil.get("flops") or {}).items() if v}
    for ax, dt in zip(axes.flat, dtypes):
        sub = [r for r in rows if r["dtype"] == dt]
        keys = {dt} | {r.get("compute") for r in sub}
        peaks = {k: v for k, v in all_peaks.items() if k in keys}
        hi = max(x_hi, 3 * max(peaks.values()) / bw) if (bw and peaks) else x_hi
        grid_x = [x_lo * (hi / x_lo) ** (i / 200) for i in range(201)]
        if bw:
            top = max(peaks.values()) if peaks else float("inf")
            ax.plot(grid_x, [min(bw * x, top) / 1e12 for x in grid_x], "k-", lw=2,
                    label=f"memory bound: {bw / 1e12:.3g} TB/s x intensity")
        for i, (k, v) in enumerate(sorted(peaks.items(), key=lambda kv: -kv[1])):
            ax.axhline(v / 1e12, color="0.35", ls=("--", ":", "-.")[i % 3], lw=1.2)
            ax.text(x_lo * 1.1, v / 1e12 * 1.08, f"{k} matmul {v / 1e12:.3g} TFLOP/s", fontsize=9, color="0.2")
        for r in sub:
            ax.scatter(r["intensity"], r["tflops"], color=colors[r["line"]], marker=MARKERS.get(r["op"], "o"),
                       s=46, edgecolor="k", lw=0.4, zorder=3)
            tag = _t_label(r["T"])
            ax.annotate(tag if pass_ else f"{tag} {r['pass']}", (r["intensity"], r["tflops"]),
                        textcoords="offset points", xytext=(4, 3), fontsize=7, color="0.25")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(x_lo, hi)
        ax.set_xlabel("arithmetic intensity (FLOP per minimum byte moved)")
        ax.set_title(f"{dt} inputs", fontsize=10)
        ax.grid(True, which="both", alpha=0.25)
        if not sub:
            ax.text(0.5, 0.5, "no successful measurements", transform=ax.transAxes, ha="center")
    axes.flat[0].set_ylabel("achieved throughput (TFLOP/s)")
    handles = [plt.Line2D([], [], color="k", lw=2, label="memory bound (copy bandwidth)")]
    handles += [plt.Line2D([], [], ls="", marker="o", color=colors[k], markeredgecolor="k", label=k)
                for k in sorted(colors)]
    handles += [plt.Line2D([], [], ls="", marker=mk, color="w", markeredgecolor="k", label=f"op: {o}")
                for o, mk in MARKERS.items() if any(r["op"] == o for r in rows)]
    fig.legend(handles=handles, fontsize=8, loc="center right", borderaxespad=0.5)
    fig.suptitle(_title(result, "Roofline (point labels: T)", pass_, dtype), fontsize=11)
    fig.tight_layout(rect=(0, 0, 0.8, 1))
    fig.savefig(path)
    plt.close(fig)
    return path


def scaling(result: dict, path: str, pass_: str = "fwd", dtype: str = None) -> str:
    """Write the time-against-T PNG (one panel per op); returns the path."""
    rows = [r for r in result["results"] if r.get("status") == "ok" and r["pass"] == pass_
            and (dtype is None or r["dtype"] == dtype)]
    if dtype is None and rows:                       # one dtype per plot: the first one measured
        dtype = rows[0]["dtype"]
        rows = [r for r in rows if r["dtype"] == dtype]
    ops = [o for o in OPS if any(r["op"] == o for r in rows)] or ["(none)"]
    ncols = 2 if len(ops) > 1 else 1
    nrows = math.ceil(len(ops) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=FIGSIZE, dpi=DPI, squeeze=False)
    colors = _colors({r["line"] for r in rows})
    for ax, op in zip(axes.flat, ops):
        sub = [r for r in rows if r["op"] == op]
        by_line = {}
        for r in sub:
            by_line.setdefault((r["line"], r["Dk"], r.get("causal")), []).append(r)
        for (line, D, causal), rs in sorted(by_line.items(), key=lambda kv: str(kv[0])):
            rs = sorted(rs, key=lambda r: r["T"])
            label = line + (f" D={D}" if len({k[1] for k in by_line}) > 1 else "") + \
                ("" if len({k[2] for k in by_line}) <= 1 else (" causal" if causal else " non-causal"))
            ax.plot([r["T"] for r in rs], [r["ms_median"] for r in rs], "-o", ms=4, color=colors[line],
                    label=label)
        if sub:
            Ts = sorted({r["T"] for r in sub})
            t0 = min(sub, key=lambda r: (r["T"], r["ms_median"]))
            for power, style, name in ((1, "k--", "O(T)"), (2, "k:", "O(T^2)")):
                ax.plot(Ts, [t0["ms_median"] * (T / t0["T"]) ** power for T in Ts], style, lw=1, label=name)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xticks(Ts, [_t_label(T) for T in Ts])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no successful measurements", transform=ax.transAxes, ha="center")
        ax.set_title(f"{op} attention", fontsize=10)
        ax.set_xlabel("sequence length T (positions)")
        ax.set_ylabel(f"median time, {pass_} (ms)")
        ax.grid(True, which="both", alpha=0.25)
    for ax in list(axes.flat)[len(ops):]:
        ax.set_visible(False)
    fig.suptitle(_title(result, "Time against sequence length", pass_, dtype), fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
