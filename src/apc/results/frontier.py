"""The frontier table (one row per point) and the frontier plot of each projection set.

Rows come from exactly the point files given (never a folder scan): perplexity, its 95 %
bootstrap interval, the paired ratio to dense, token count, kept share, predictor FLOPs
share, compute share (kept + predictor) and the clustering cell of the point.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from apc.common.atomic import atomic_path, read_json
from apc.common.frontier import parse_line
from apc.common.progress import get_logger

log = get_logger("apc.results.frontier")

COLUMNS = ["pset", "line", "family", "mode", "share", "ppl", "ppl_lo", "ppl_hi", "ratio", "ratio_lo", "ratio_hi",
           "tokens", "windows", "kept_share", "predictor_flops_share", "compute_share", "cells"]


def frontier_rows(points: Iterable[str | os.PathLike], refs: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per point file (columns :data:`COLUMNS`, ``cells`` as ``proj=key`` joined by ``;``)."""
    from apc.results.summary import _interval_columns, reference_columns

    _, dense = reference_columns(list(refs))
    rows = []
    for path in points:
        d = read_json(path)
        iv = _interval_columns("ppl", d, dense)
        rows.append({"pset": d["pset"], "line": d["line"], "family": d["family"], "mode": d["mode"],
                     "share": d["share"], **iv, "tokens": d["tokens"], "windows": d["windows"],
                     "kept_share": d["kept_share"], "predictor_flops_share": d["predictor_flops_share"],
                     "compute_share": d["compute_share"],
                     "cells": ";".join(f"{q}={k}" for q, k in sorted((d.get("cells") or {}).items()))})
    return pd.DataFrame(rows, columns=COLUMNS)


def write_frontier_table(path: str | os.PathLike, points, refs) -> pd.DataFrame:
    """Write :func:`frontier_rows` to ``path`` (CSV); return the frame."""
    df = frontier_rows(points, refs)
    with atomic_path(path, ".csv") as tmp:
        df.to_csv(tmp, index=False)
    log.info("frontier table: %d points -> %s", len(df), path)
    return df


def _label(line: str) -> str:
    d = parse_line(line)
    if d["family"] == "oracle":
        return f"static ({d['scope']})" if d["method"] == "static" else \
            f"oracle {d['method']} K={d['k']} ({d['scope']})"
    if d["family"] == "predicted":
        return f"predicted {d['kind']} top-{d['top_m']} {d['method']} K={d['k']} ({d['scope']})"
    if d["family"] == "neuron":
        return f"neuron predictor x{d['factor']} ({d['kind']} K={d['k']} FLOPs)"
    return d["family"]


def _on_windows(ref: dict, n: int) -> float:
    """A reference perplexity on its first ``n`` windows, the ones the frontier points score
    (every result scores the first windows of the same test split); all of them when it has fewer."""
    from apc.perplexity.intervals import ppl_of

    if n and "window_nll_sum" in ref and n < len(ref["window_nll_sum"]):
        return ppl_of(ref["window_nll_sum"][:n], ref["window_tokens"][:n])
    return float(ref["ppl"])


def plot_frontier(table: pd.DataFrame, pset: str, dense: dict | None, sparse: dict | None, path: Path) -> Path:
    """Perplexity (log y, 95 % interval bars) against the FFN compute share spent, one line per line
    of ``pset``; dense at share 1 and true sparse at its kept share as reference lines."""
    from apc.results.plots import _figure, _save

    fig, axes = _figure(1, 1, w=7.5, h=5.0)
    ax = axes[0, 0]
    rows = table[table["pset"] == pset]
    styles = {"threshold": "-", "random": ":", "oracle": "-", "predicted": "--", "neuron": "-."}
    for line, g in rows.groupby("line", sort=False):
        g = g.sort_values("compute_share")
        y = g["ppl"].to_numpy(float)
        err = np.vstack([y - g["ppl_lo"].to_numpy(float), g["ppl_hi"].to_numpy(float) - y])
        ax.errorbar(g["compute_share"], y, yerr=err, marker="o", ms=4, capsize=3,
                    ls=styles.get(g["family"].iloc[0], "-"), label=_label(line))
    n = int(rows["windows"].max()) if len(rows) else 0
    if dense is not None:
        d = _on_windows(dense, n)
        ax.axhline(d, color="black", lw=1, label=f"dense ({d:.2f})")
    if sparse is not None:
        kept = np.mean(list((sparse.get("kept") or {1.0: 1.0}).values()))
        sp = _on_windows(sparse, n)
        ax.axhline(sp, color="grey", lw=1, ls="--", label=f"true sparse ({sp:.2f}, kept {kept:.2f}, needs the full FFN)")
    ax.set_yscale("log")
    ax.set_xlabel("FFN compute share spent (kept neurons + predictor FLOPs)")
    ax.set_ylabel("perplexity (test, 95 % CI)")
    ax.set_title(f"compute-quality frontier: {pset}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def make_frontier_plots(plot_dir: str | os.PathLike, table_path, refs=()) -> list[Path]:
    """``frontier_{pset}.png`` for every projection set of the frontier table at ``table_path``."""
    table = pd.read_csv(table_path)
    references = [read_json(p) for p in refs]
    dense = next((r for r in references if r.get("mode") == "dense"), None)
    sparse = {r["pset"]: r for r in references if r.get("mode") == "sparse"}
    return [plot_frontier(table, pset, dense, sparse.get(pset), Path(plot_dir) / f"frontier_{pset}.png")
            for pset in sorted(table["pset"].unique())]
