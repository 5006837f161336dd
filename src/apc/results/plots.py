"""Static PNG plots of a results tree (matplotlib Agg, no pyplot state).

* ``recall_vs_k.png`` / ``precision_vs_k.png``: metric against K (log2 x), one line
  per method, facets scope (rows) x projection (columns); test solid, train dashed;
  dotted reference: the random-mask expectation (``random_recall`` for recall, the
  data density for precision).  A method with a single K (static, K=1) is a marker.
* ``ppl_{pset}.png``: perplexity against K (log y) per method, facets scope (rows) x
  mode (centroid / centroid_only / random); dense and true-sparse horizontal lines.
* ``layer_recall_{scope}.png``: per-layer test recall heat map (layers x K), facets
  projection (rows) x method (columns).

Values are averaged over seeds.  A plot whose inputs are absent is skipped with a log line.
Plots read exactly the result files they are given (the rule's inputs), never a folder scan.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from apc.common.atomic import atomic_path, read_json
from apc.common.progress import get_logger

log = get_logger("apc.results.plots")

MODES = ("centroid", "centroid_only", "random")


def new_figure(nrows: int, ncols: int, w: float = 4.0, h: float = 3.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(1, ncols) * w, max(1, nrows) * h), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    return fig, axes


def save_figure(fig, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write ``fig`` to ``path`` (PNG, atomically); ``metadata``: text chunks to store in it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, metadata=metadata)
    log.info("plot -> %s", path)
    return path


def _colors(methods) -> dict[str, tuple]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(sorted(methods))}


def _log2_axis(ax, ks) -> None:
    ax.set_xscale("log", base=2)
    ks = sorted(set(int(k) for k in ks))
    if ks:
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks], fontsize=7)
        ax.minorticks_off()


def _metric_vs_k(ev: pd.DataFrame, metric: str, ref_col: str, path: Path) -> Path:
    tot = ev[ev["layer"] == "all"]
    scopes, projs = sorted(tot["scope"].unique()), sorted(tot["projection"].unique())
    colors = _colors(tot["method"].unique())
    fig, axes = new_figure(len(scopes), len(projs))
    for i, scope in enumerate(scopes):
        for j, proj in enumerate(projs):
            ax = axes[i, j]
            sub = tot[(tot["scope"] == scope) & (tot["projection"] == proj)]
            for method, g in sub.groupby("method"):
                c = colors[method]
                for split, ls in (("test", "-"), ("train", "--")):
                    s = g[g["split"] == split].groupby("k")[metric].mean().sort_index()
                    if len(s):
                        ax.plot(s.index, s.values, ls, color=c, marker="o", ms=4,
                                label=f"{method} ({split})")
                ref = g[g["split"] == "test"].groupby("k")[ref_col].mean().sort_index()
                if len(ref):
                    ax.plot(ref.index, ref.values, ":", color=c, marker="x" if len(ref) == 1 else None,
                            ms=4, lw=1, label=f"{method} random mask")
            _log2_axis(ax, sub["k"])
            ax.set_title(f"{proj} / {scope}", fontsize=9)
            ax.set_xlabel("K (clusters)")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        axes[0, -1].legend(handles, labels, fontsize=6, loc="best")
    fig.suptitle(f"{metric} against K (test solid, train dashed, dotted: random-mask expectation)", fontsize=10)
    return save_figure(fig, path)


def _num(v) -> float:
    """A bound read from a result: NaN where it is missing (no interval: "n/a")."""
    return float("nan") if v is None else float(v)


def _ppl_plot(pset: str, cells: list[dict], dense_ppl, sparse_ppl, path: Path) -> Path:
    df = pd.DataFrame(cells)
    scopes = sorted(df["scope"].unique())
    colors = _colors(df["method"].unique())
    fig, axes = new_figure(len(scopes), len(MODES))
    for i, scope in enumerate(scopes):
        for j, mode in enumerate(MODES):
            ax = axes[i, j]
            sub = df[(df["scope"] == scope) & (df["mode"] == mode)]
            for method, g in sub.groupby("method"):
                s = g.groupby("k")[["ppl", "lo", "hi"]].mean().sort_index()
                err = [(s["ppl"] - s["lo"]).clip(lower=0).fillna(0), (s["hi"] - s["ppl"]).clip(lower=0).fillna(0)]
                ax.errorbar(s.index, s["ppl"], yerr=err, fmt="-o", color=colors[method], ms=4, capsize=2,
                            label=method)
            if dense_ppl is not None:
                ax.axhline(dense_ppl, color="k", ls="--", lw=1, label="dense")
            if sparse_ppl is not None:
                ax.axhline(sparse_ppl, color="0.4", ls="-.", lw=1, label=f"true sparse ({pset})")
            _log2_axis(ax, df["k"])
            ax.set_yscale("log")
            ax.set_title(f"{pset} / {scope} / {mode}", fontsize=9)
            ax.set_xlabel("K (clusters)")
            ax.set_ylabel("perplexity")
            ax.grid(alpha=0.3, which="both")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        axes[0, -1].legend(handles, labels, fontsize=6, loc="best")
    na = df["lo"].isna().any()
    fig.suptitle(f"perplexity against K, masks on {pset} (bars: 95 % block-bootstrap interval"
                 + ("; no bar: interval n/a, fewer than 20 blocks)" if na else ")"), fontsize=10)
    return save_figure(fig, path)


def _layer_heatmap(ev: pd.DataFrame, scope: str, path: Path) -> Path | None:
    sub = ev[(ev["scope"] == scope) & (ev["split"] == "test") & (ev["layer"] != "all")].copy()
    if sub.empty:
        return None
    sub["layer_i"] = sub["layer"].astype(int)
    projs, methods = sorted(sub["projection"].unique()), sorted(sub["method"].unique())
    fig, axes = new_figure(len(projs), len(methods), w=3.6, h=3.4)
    vmin, vmax = float(sub["recall"].min()), float(sub["recall"].max())
    if vmin == vmax:
        vmin, vmax = vmin - 1e-3, vmax + 1e-3
    im = None
    for i, proj in enumerate(projs):
        for j, method in enumerate(methods):
            ax = axes[i, j]
            g = sub[(sub["projection"] == proj) & (sub["method"] == method)]
            ax.set_title(f"{proj} / {method}", fontsize=9)
            if g.empty:
                ax.set_axis_off()
                continue
            mat = g.pivot_table(index="layer_i", columns="k", values="recall", aggfunc="mean").sort_index()
            mat = mat[sorted(mat.columns)]
            im = ax.imshow(mat.values, aspect="auto", origin="lower", cmap="viridis", vmin=vmin, vmax=vmax,
                           interpolation="nearest")
            ax.set_xticks(range(mat.shape[1]))
            ax.set_xticklabels([str(k) for k in mat.columns], fontsize=7)
            step = max(1, mat.shape[0] // 8)
            ax.set_yticks(range(0, mat.shape[0], step))
            ax.set_yticklabels([str(x) for x in mat.index[::step]], fontsize=7)
            ax.set_xlabel("K")
            ax.set_ylabel("layer")
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="test recall")
    fig.suptitle(f"per-layer test recall, {scope} centroids", fontsize=10)
    return save_figure(fig, path)


def _label_densities(df: pd.DataFrame) -> None:
    """With several centroid densities in the sweep, each (method, density) gets its own line."""
    if "density" in df and df["density"].nunique() > 1:
        df["method"] = df["method"] + " d=" + df["density"].map(lambda d: f"{float(d):g}")


def make_plots(plot_dir: str | os.PathLike, evals=(), refs=(), ppl_cells=()) -> list[Path]:
    """Write every plot of exactly the given result files into ``plot_dir``; return their paths.

    ``evals``: eval CSVs; ``refs``: dense and sparse perplexity results; ``ppl_cells``: perplexity cells.
    """
    from apc.results.summary import read_eval

    pdir = Path(plot_dir)
    written: list[Path] = []
    ev = read_eval(evals)
    if ev.empty:
        log.info("plots: no eval results; skipping recall/precision and heat-map plots")
    else:
        _label_densities(ev)
        written.append(_metric_vs_k(ev, "recall", "random_recall", pdir / "recall_vs_k.png"))
        written.append(_metric_vs_k(ev, "precision", "data_density", pdir / "precision_vs_k.png"))
        for scope in sorted(ev["scope"].unique()):
            p = _layer_heatmap(ev, scope, pdir / f"layer_recall_{scope}.png")
            if p is None:
                log.info("plots: no per-layer test rows for scope %s; skipping heat map", scope)
            else:
                written.append(p)

    references = [read_json(p) for p in refs]
    dense_ppl = next((r["ppl"] for r in references if r.get("mode") == "dense"), None)
    sparse_ppl = {r["pset"]: r["ppl"] for r in references if r.get("mode") == "sparse"}
    by_pset: dict[str, list[dict]] = {}
    for path in ppl_cells:
        d = read_json(path)
        for mode, md in (d.get("modes") or {}).items():
            if md.get("ppl") is not None and np.isfinite(float(md["ppl"])):
                by_pset.setdefault(d["pset"], []).append({
                    "scope": d["scope"], "method": d["method"], "k": int(d["k"]), "density": d["density"], "seed": d["seed"], "mode": mode,
                    "ppl": float(md["ppl"]), "lo": _num(md.get("ppl_lo")), "hi": _num(md.get("ppl_hi"))})
    if not by_pset:
        log.info("plots: no perplexity cells; skipping perplexity plots")
    for pset, cells in sorted(by_pset.items()):
        _label_densities(cells := pd.DataFrame(cells))
        written.append(_ppl_plot(pset, cells, dense_ppl, sparse_ppl.get(pset), pdir / f"ppl_{pset}.png"))
    return written
