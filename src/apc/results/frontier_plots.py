"""The frontier plots of a frontier table (:mod:`apc.results.frontier`), one set per projection set.

Every quality axis is relative to dense on the line's own tokens: ``ratio`` (perplexity over dense's; GRIFFIN's
points carry their own dense, on the tokens after the prompt) or the mean KL from dense, on a log scale with the
95 % interval bars of the table.  A static plot draws few lines
(:func:`apc.results.frontier_lines.pick_lines`): dense (ratio 1), the best deployable line of each family, and
the best upper bound of each family that has one (hollow markers, dashed, labelled "upper bound").
:mod:`apc.results.frontier_html` draws every line, interactively.

* ``frontier_{pset}.png``: ratio against the compute share (FFN multiply-adds run + predictor FLOPs);
* ``frontier_kl_{pset}.png``: mean KL(dense || masked) against the compute share, where the table has KL;
* ``frontier_time_{pset}.png``, ``frontier_time_b{B}_{pset}.png``: ratio against a measured time share;
* ``batch_{pset}.png``: the share of weight rows read against the batch size B;
* ``frontier.html``: the interactive frontier of every line.

Each file is stamped with the sha256 of what it was drawn from (:mod:`apc.results.plot_stamp`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from apc.common.atomic import read_json
from apc.common.progress import get_logger
from apc.results.frontier_lines import (PICK_RULE, Y_CAP, frontier_shares, line_label, line_style, pick_lines,
                                       sparse_ratio)
from apc.results.paired import deployable
from apc.results.plot_stamp import frontier_stamp, png_metadata

log = get_logger("apc.results.frontier_plots")

SHARE_LABEL = "compute share: FFN multiply-adds run + predictor FLOPs, over dense's"
RATIO_LABEL = "perplexity / dense's on the same tokens (log; 95 % CI; dotted: 1.05x, 1.25x)"

def _own_tokens(g: pd.DataFrame, n_tokens: int) -> str:
    """A note for a line scored on other tokens than the rest (GRIFFIN: those after the prompt)."""
    t = int(g["tokens"].iloc[0]) if "tokens" in g and len(g) and np.isfinite(g["tokens"].iloc[0]) else n_tokens
    return f" [{t} tokens after the prompt, vs dense on them]" if t != n_tokens else ""


def _bars(g: pd.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray, bool]:
    """``(y, yerr: (2, n), missing)`` of column ``col`` with its ``_lo``, ``_hi`` bounds; a point without an
    interval (NaN bounds: fewer than 20 blocks) gets no bar and ``missing`` is True."""
    y = g[col].to_numpy(float)
    lo = g[f"{col}_lo"].to_numpy(float) if f"{col}_lo" in g else np.full(len(y), np.nan)
    hi = g[f"{col}_hi"].to_numpy(float) if f"{col}_hi" in g else np.full(len(y), np.nan)
    err = np.vstack([y - lo, hi - y])
    missing = ~np.isfinite(err).all(axis=0)
    err[:, missing] = 0.0
    return y, np.clip(err, 0.0, None), bool(missing.any())


def _draw(ax, rows: pd.DataFrame, lines: list[str], x: str, col: str, cap: float | None = None) -> None:
    """One errorbar line per line of ``lines``: ``col`` (with its bounds) against ``x``, its points joined in
    kept-share order (a measured time need not grow with the share); values above ``cap``
    leave the axes, their value printed at the top edge (stacked where several are close)."""
    import textwrap

    n_tokens = int(rows["tokens"].mode().iloc[0]) if "tokens" in rows and rows["tokens"].notna().any() else 0
    span = float(np.ptp(rows[x].to_numpy(float))) if len(rows) else 1.0
    placed: list[float] = []
    for ln in lines:
        g = rows[(rows["line"] == ln) & np.isfinite(rows[col].to_numpy(float))]
        g = g.sort_values(["share", x] if "share" in g else x)  # in the line's own order: kept share
        if g.empty:
            continue
        y, err, missing = _bars(g, col)
        label = line_label(ln) + _own_tokens(g, n_tokens) + (" (interval n/a)" if missing else "")
        st = line_style(ln)
        ax.errorbar(g[x], y, yerr=err, capsize=2.5, elinewidth=0.9, label=textwrap.fill(label, 52), **st)
        if cap is not None:
            for xi, yi in zip(g[x].to_numpy(float), y):
                if yi > cap:
                    k = sum(abs(xi - p) < 0.06 * (span or 1.0) for p in placed)
                    placed.append(xi)
                    ax.annotate(f"{yi:.0f}x", (xi, cap), xytext=(3, -2 - 8 * k), textcoords="offset points",
                                ha="left", va="top", fontsize=6.5, color=st["color"], annotation_clip=False)


#: the ratio axis' labelled ticks, and the decision table's ratio levels (dotted)
RATIO_TICKS = (0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)
RATIO_LEVELS = (1.05, 1.25)


def _ratio_limits(ax, rows: pd.DataFrame, lines: list[str]) -> float:
    """Set the ratio axis (log) to the drawn values, capped at :data:`Y_CAP`; return the top."""
    from matplotlib.ticker import FixedLocator, NullFormatter

    sub = rows[rows["line"].isin(lines)]
    hi = np.nanmax(np.r_[sub["ratio"].to_numpy(float), sub.get("ratio_hi", sub["ratio"]).to_numpy(float), 1.1])
    lo = np.nanmin(np.r_[sub["ratio"].to_numpy(float), sub.get("ratio_lo", sub["ratio"]).to_numpy(float), 1.0])
    top, bottom = float(min(Y_CAP, hi * 1.15)), float(max(lo * 0.97, 1e-3))
    ax.set_yscale("log")
    ax.set_ylim(bottom, top)
    ax.yaxis.set_major_locator(FixedLocator([t for t in RATIO_TICKS if bottom <= t <= top]))
    ax.yaxis.set_major_formatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_minor_formatter(NullFormatter())
    for level in RATIO_LEVELS:
        ax.axhline(level, color="grey", lw=0.7, ls=":")
    return top


def _finish(fig, ax, title: str, xlabel: str, ylabel: str, note: str = PICK_RULE) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8.5)
    ax.set_ylabel(ylabel, fontsize=8.5)
    ax.grid(True, which="both", alpha=0.25)
    fig.legend(loc="outside right upper", fontsize=7, frameon=False)
    fig.text(0.005, 0.005, note, fontsize=6.3, wrap=True, va="bottom", ha="left", color="0.25")
    fig.get_layout_engine().set(rect=(0, 0.07, 1, 0.93))


def _figure():
    from apc.results.plots import new_figure

    fig, axes = new_figure(1, 1, w=11.5, h=5.6)
    return fig, axes[0, 0]


def _save(fig, path: Path, metadata: dict | None) -> Path:
    from apc.results.plots import save_figure

    return save_figure(fig, path, metadata=metadata)


def plot_frontier(table: pd.DataFrame, pset: str, path: Path, true_sparse: float | None = None,
                  metadata: dict | None = None) -> Path:
    """Ratio to dense perplexity (log y, 95 % interval bars) against the compute share, :func:`pick_lines` of
    ``pset``; dense at ratio 1 and, where given, true sparse (needs the full FFN) at its ratio."""
    rows = table[table["pset"] == pset]
    lines = pick_lines(rows)
    fig, ax = _figure()
    ax.axhline(1.0, color="black", lw=1.2, label="dense (ratio 1)")
    if true_sparse is not None and np.isfinite(true_sparse):
        ax.axhline(true_sparse, color="0.5", lw=0.9, ls=":", label=f"true sparse, needs the full FFN ({true_sparse:.4g}x)")
    top = _ratio_limits(ax, rows, lines)
    _draw(ax, rows, lines, "compute_share", "ratio", cap=top)
    _finish(fig, ax, f"compute-quality frontier: {pset} ({rows['line'].nunique()} lines, {len(lines)} drawn)",
            SHARE_LABEL, RATIO_LABEL)
    return _save(fig, path, metadata)


def plot_kl_frontier(table: pd.DataFrame, pset: str, path: Path, metadata: dict | None = None) -> Path:
    """Mean KL(dense || masked) per token (log y, 95 % interval bars) against the compute share, the lines of
    :func:`pick_lines`, with the decision table's KL levels (0.05, 0.2 nats) as reference lines."""
    rows = table[table["pset"] == pset]
    lines = pick_lines(rows)
    fig, ax = _figure()
    for level in (0.05, 0.2):
        ax.axhline(level, color="grey", lw=0.8, ls=":")
    _draw(ax, rows, lines, "compute_share", "kl")
    ref = rows["kl_reference"].dropna().unique() if "kl_reference" in rows else []
    bound = "" if list(ref) in ([], ["exact"]) else f", {'/'.join(map(str, ref))} lower bound"
    ax.set_yscale("log")
    _finish(fig, ax, f"divergence from dense against compute: {pset} (dotted: 0.05 and 0.2 nats)", SHARE_LABEL,
            f"mean KL(dense || masked) per token, nats (log; 95 % CI{bound})")
    return _save(fig, path, metadata)


def plot_time_frontier(table: pd.DataFrame, pset: str, path: Path, column: str = "time_share_prefill",
                       metadata: dict | None = None) -> Path:
    """Ratio to dense perplexity (log y, 95 % interval bars) against a measured time share (``column``:
    ``time_share_prefill``, ``time_share_decode`` or ``time_share_decode_b{B}``); lines without a kernel are
    left out and :func:`pick_lines` picks among the rest on this axis; dense at (1, 1)."""
    rows = table[(table["pset"] == pset) & np.isfinite(table[column].to_numpy(float))]
    lines = pick_lines(rows, x=column)
    fig, ax = _figure()
    ax.axhline(1.0, color="black", lw=1.2, label="dense (ratio 1, time share 1)")
    ax.axvline(1.0, color="black", lw=0.8, ls=":")
    top = _ratio_limits(ax, rows, lines)
    _draw(ax, rows, lines, column, "ratio", cap=top)
    if column.startswith("time_share_decode"):
        b = column.rsplit("_b", 1)[1] if "_b" in column else "1"
        xlabel = f"decode step time over the dense model's (batch {b}; whole model, measured)"
    else:
        xlabel = "FFN time share of the line's masked kernel (T = 4096 tokens; measured, over dense)"
    _finish(fig, ax, f"time-quality frontier: {pset}", xlabel, RATIO_LABEL,
            PICK_RULE.replace("compute shares", "time shares"))
    return _save(fig, path, metadata)


def plot_batch_view(table: pd.DataFrame, pset: str, share: float, path: Path, metadata: dict | None = None) -> Path:
    """Share of weight rows read against the batch size B at kept share ``share`` (each line's nearest), the
    deployable lines of :func:`pick_lines`: the union of B tokens' masks (solid) and, for cluster lines, the rows
    read when each id group reads its own (dotted)."""
    rows = table[table["pset"] == pset]
    lines = [ln for ln in pick_lines(rows) if deployable(ln)]
    sizes = sorted(int(c[len("union_b"):]) for c in rows.columns if c.startswith("union_b"))
    fig, ax = _figure()
    for ln in lines:
        g = rows[rows["line"] == ln]
        row = g.iloc[int(np.argmin(np.abs(g["share"].to_numpy(float) - share)))]
        st = line_style(ln)
        ax.plot(sizes, [row[f"union_b{b}"] for b in sizes], label=f"{line_label(ln)} (kept {row['kept_share']:.2f})",
                **st)
        grouped = np.asarray([row.get(f"grouped_b{b}", np.nan) for b in sizes], float)
        if np.isfinite(grouped).any():
            ax.plot(sizes, grouped, **{**st, "ls": ":", "mfc": "white"}, label=f"{line_label(ln)}: grouped by id")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.set_ylim(0, 1.05)
    _finish(fig, ax, f"batch view: {pset}, kept share ~ {share:g}", "B consecutive tokens sharing one weight read",
            "share of a layer's down_in neurons read (mean over layers)",
            PICK_RULE.replace(" and the best upper bound of each family that has one (hollow, dashed)", "")
            .replace("Drawn: dense, the", "Drawn: the"))
    return _save(fig, path, metadata)


DECODE_COLUMNS = ("time_share_decode", "time_share_decode_b16")


def _has(table: pd.DataFrame, col: str) -> bool:
    return col in table.columns and bool(np.isfinite(table[col].to_numpy(float)).any())


def plot_plan(table: pd.DataFrame, refs: list[dict] = (), batch_share: float | None = None
              ) -> list[tuple[str, list[str], Callable[[Path, dict], Path]]]:
    """``[(file name, projection sets it draws, draw(path, metadata))]``: every frontier plot of ``table``."""
    from apc.results.frontier_html import write_frontier_html

    dense = next((r for r in refs if r.get("mode") == "dense"), None)
    sparse = {r["pset"]: r for r in refs if r.get("mode") == "sparse"}
    psets = sorted(table["pset"].unique())
    plan = []
    for pset in psets:
        sr = sparse_ratio(table[table["pset"] == pset], dense, sparse.get(pset))
        plan.append((f"frontier_{pset}.png", [pset],
                     lambda p, m, pset=pset, sr=sr: plot_frontier(table, pset, p, sr, metadata=m)))
    if _has(table, "kl"):
        plan += [(f"frontier_kl_{pset}.png", [pset], lambda p, m, pset=pset: plot_kl_frontier(table, pset, p, m))
                 for pset in psets]
    if _has(table, "time_share_prefill"):
        plan += [(f"frontier_time_{pset}.png", [pset],
                  lambda p, m, pset=pset: plot_time_frontier(table, pset, p, metadata=m)) for pset in psets]
    if "time_share_decode_b16" in table.columns:  # a decode table: whole decode steps at batch 1 and 16
        for col in DECODE_COLUMNS:
            b = col.rsplit("_b", 1)[1] if "_b" in col else "1"
            if _has(table, col):
                plan += [(f"frontier_time_b{b}_{pset}.png", [pset],
                          lambda p, m, pset=pset, col=col: plot_time_frontier(table, pset, p, col, m)) for pset in psets]
    if any(c.startswith("union_b") for c in table.columns):
        shares = frontier_shares(table)
        share = batch_share if batch_share is not None else (shares[len(shares) // 2] if shares else 0.6)
        plan += [(f"batch_{pset}.png", [pset], lambda p, m, pset=pset: plot_batch_view(table, pset, share, p, m))
                 for pset in psets]
    plan.append(("frontier.html", psets, lambda p, m: write_frontier_html(p, table, dense, sparse, m)))
    return plan


def make_frontier_plots(plot_dir: str | os.PathLike, table_path, refs=(), batch_share: float | None = None) -> list[Path]:
    """Draw every plot of :func:`plot_plan` for the frontier table at ``table_path`` and the reference results
    ``refs`` (dense, true sparse) into ``plot_dir``, each stamped (:func:`apc.results.plot_stamp.frontier_stamp`)."""
    refs = list(refs)
    table = pd.read_csv(table_path)
    references = [read_json(p) for p in refs]
    out = []
    for name, psets, draw in plot_plan(table, references, batch_share):
        stamp = frontier_stamp(table_path, refs, psets)
        out.append(draw(Path(plot_dir) / name, png_metadata(stamp, psets)))
    return out
