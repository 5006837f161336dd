"""The frontier table (one row per point) and the frontier plot of each projection set.

Rows come from exactly the point files given (never a folder scan): perplexity, its 95 %
block-bootstrap interval, the paired ratio to dense, the mean KL(dense || point) per token in nats
and the top-1 agreement with dense (each with its interval; NaN bounds where the point has fewer
than 20 blocks: "n/a"), ``kl_topk`` (with an exact reference: the same KL through the dense top-k
plus one bucket, the approximation a large vocabulary uses), token count, resampling units, kept share, the share of each
matrix product's multiply-adds run (mean over layers), the FFN FLOPs share, predictor FLOPs
share, compute share (FFN + predictor), the batch view (``union_b{B}``: share of neurons at
least one of B consecutive tokens keeps; ``grouped_b{B}``: cluster lines' distinct ids times
their density, capped at 1) and the clustering cell of the point.

:func:`crossings` reads the table as a decision: the compute share at which each line reaches
a given ratio to dense perplexity, and a given mean KL from dense.
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
           "kl", "kl_lo", "kl_hi", "top1", "top1_lo", "top1_hi", "kl_reference", "kl_topk",
           "tokens", "windows", "units", "kept_share", "gate_share", "up_share", "down_share", "ffn_flops_share",
           "predictor_flops_share", "rotation_flops_share", "compute_share", "cells"]


def point_columns(d: dict) -> dict[str, float]:
    """The per-product FLOPs shares (mean over layers) and the batch view of one point file,
    mean over the masked projections: ``{gate_share, up_share, down_share, union_b{B}, grouped_b{B}}``."""
    out = {f"{prod}_share": float(np.mean(v)) for prod, v in (d.get("product_shares") or {}).items()}
    batch = d.get("batch") or {}
    sizes = sorted({int(b) for v in batch.values() for b in v})
    for b in sizes:
        union = [v[str(b)]["union"]["mean"] for v in batch.values() if str(b) in v]
        grouped = [v[str(b)]["grouped"]["mean"] for v in batch.values() if str(b) in v and v[str(b)]["grouped"]]
        out[f"union_b{b}"] = float(np.mean(union))
        out[f"grouped_b{b}"] = float(np.mean(grouped)) if grouped else float("nan")
    return out


def frontier_rows(points: Iterable[str | os.PathLike], refs: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """One row per point file (columns :data:`COLUMNS`, ``cells`` as ``proj=key`` joined by ``;``)."""
    from apc.results.summary import interval_columns, reference_columns

    _, dense = reference_columns(list(refs))
    rows = []
    for path in points:
        d = read_json(path)
        iv = interval_columns("ppl", d, d.get("dense") or dense)  # griffin: dense on its own (later) tokens
        rows.append({"pset": d["pset"], "line": d["line"], "family": d["family"], "mode": d["mode"],
                     "share": d["share"], **iv, "kl_reference": d.get("kl_reference"),
                     "kl_topk": d.get("kl_topk", float("nan")), "tokens": d["tokens"],
                     "windows": d["windows"], "units": d.get("units"),
                     "kept_share": d["kept_share"], "ffn_flops_share": d.get("ffn_flops_share"),
                     "predictor_flops_share": d["predictor_flops_share"],
                     "rotation_flops_share": d.get("rotation_flops_share", 0.0), "compute_share": d["compute_share"],
                     "cells": ";".join(f"{q}={k}" for q, k in sorted((d.get("cells") or {}).items())),
                     **point_columns(d)})
    extra = sorted({k for r in rows for k in r} - set(COLUMNS), key=lambda k: (k.split("_b")[0], int(k.split("_b")[-1]))
                   if "_b" in k and k.split("_b")[-1].isdigit() else (k, 0))
    return pd.DataFrame(rows, columns=COLUMNS + extra)


def crossings(table: pd.DataFrame, ratios=(1.05, 1.25), kls=(0.05, 0.2)) -> pd.DataFrame:
    """Per line of ``table``: the compute share at which its perplexity ratio to dense falls to each of
    ``ratios``, and its mean KL from dense to each of ``kls`` (nats), interpolated linearly between its
    points ordered by compute share (and the same for the interval's bounds: ``share_{r}_lo`` uses
    the lower bound, so it is the earliest share the interval allows).  NaN where the line never
    reaches the level (or, for the bounds, where its points carry no interval).  Columns ``pset, line,
    family``, then ``share_{r}, share_{r}_lo, share_{r}_hi`` per ratio r and ``share_kl{v}, ..._lo,
    ..._hi`` per KL level v."""
    levels = [(f"share_{r:g}", "ratio", r) for r in ratios] + [(f"share_kl{v:g}", "kl", v) for v in kls]
    rows = []
    for (pset, line), g in table.groupby(["pset", "line"], sort=False):
        g = g.sort_values("compute_share")
        x = g["compute_share"].to_numpy(float)
        row = {"pset": pset, "line": line, "family": g["family"].iloc[0]}
        for name, col, level in levels:
            for suffix in ("", "_lo", "_hi"):
                y = g[col + suffix].to_numpy(float) if col + suffix in g else np.full(len(g), np.nan)
                row[name + suffix] = _first_crossing(x, y, level)
        rows.append(row)
    return pd.DataFrame(rows)


def _first_crossing(x: np.ndarray, y: np.ndarray, level: float) -> float:
    """The smallest x where the piecewise-linear y(x) is at or below ``level`` (NaN if never)."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) == 0:
        return float("nan")
    if y[0] <= level:
        return float(x[0])
    for i in range(1, len(x)):
        if y[i] <= level:
            t = (y[i - 1] - level) / (y[i - 1] - y[i])
            return float(x[i - 1] + t * (x[i] - x[i - 1]))
    return float("nan")


#: The masked-FFN kernel (:mod:`apc.deploy`) that runs each line family; None: no kernel of its own
KERNEL = {"oracle": "grouped", "predicted": "grouped", "neuron": "per_token", "random": "per_token", "cats": "cats",
          "threshold": None, "teal": None, "wina": None, "larosa": None, "griffin": None, "experts": "grouped"}
DECODE_TOKENS, PREFILL_TOKENS = 1, 4096


def _groups(d: dict) -> int:
    """A cluster point's measured group count: distinct ids used on the scored tokens (mean over layers)."""
    counts = [c for per_layer in (d.get("id_counts") or {}).values() for c in per_layer]
    return max(1, int(round(np.mean([np.count_nonzero(c) for c in counts])))) if counts else 1


#: The ``bench_decode.py`` line that runs each line family (a decode table); None: no kernel of its own
DECODE_LINE = {"oracle": "cluster", "predicted": "cluster", "neuron": "per_token", "random": "per_token",
               "cats": "cats", "teal": "teal", "wina": "wina", "experts": "cluster", "threshold": None}
DECODE_BATCHES = (1, 16)


def time_columns(points: Iterable[str | os.PathLike], table, *, d_model: int, d_ff: int) -> list[dict]:
    """Per point file, the time shares of its family's kernel, and ``time_table`` naming the table used.

    A ``benchmarks/bench_ffn_masks.py`` table (FFN kernels alone, at the model's FFN shapes, read with
    :func:`apc.deploy.roofline.time_share`): ``time_share_decode`` (T = 1) and ``time_share_prefill``
    (T = 4096), the kernel's time over the dense FFN's at the point's kept share and group count.
    A ``benchmarks/bench_decode.py`` table (whole decode steps, :mod:`apc.deploy.decode_table`):
    ``time_share_decode`` (batch 1) and ``time_share_decode_b16`` (batch 16), the step's time over the
    dense model's at the point's FFN compute share.  NaN where the family has no kernel or the table
    lacks the shape, batch or token count (logged)."""
    from apc.deploy.decode_table import is_decode_table

    if isinstance(table, (str, os.PathLike)) and str(table).endswith(".csv") and is_decode_table(table):
        return _decode_time_columns(points, table)
    from apc.deploy.roofline import load_table, time_share

    rows = load_table(table)
    out = []
    for path in points:
        d = read_json(path)
        kernel = KERNEL.get(d["family"])
        cols = {}
        for name, tokens in (("time_share_decode", DECODE_TOKENS), ("time_share_prefill", PREFILL_TOKENS)):
            if kernel is None:
                cols[name] = float("nan")
                continue
            groups = _groups(d) if kernel == "grouped" else tokens
            try:
                cols[name] = time_share(rows, kernel, tokens, float(d["kept_share"]), groups, d_model=d_model, d_ff=d_ff)
            except ValueError as err:
                log.warning("no time share for %s at %d tokens: %s", d["line"], tokens, err)
                cols[name] = float("nan")
        cols["time_table"] = f"ffn:{Path(table).name}" if isinstance(table, (str, os.PathLike)) else "ffn"
        out.append(cols)
    return out


def _decode_time_columns(points, table) -> list[dict]:
    from apc.deploy.decode_table import decode_time_share, load_decode_table

    rows = load_decode_table(table)
    out = []
    for path in points:
        d = read_json(path)
        line = DECODE_LINE.get(d["family"])
        if line == "cluster" and parse_line(d["line"]).get("method") == "static":
            line = "static"
        share = d.get("ffn_flops_share")
        share = float(d["compute_share"] if share is None else share)
        cols = {}
        for b in DECODE_BATCHES:
            name = "time_share_decode" if b == 1 else f"time_share_decode_b{b}"
            try:
                cols[name] = float("nan") if line is None else decode_time_share(rows, line, share, b)
            except ValueError as err:
                log.warning("no decode time share for %s at batch %d: %s", d["line"], b, err)
                cols[name] = float("nan")
        cols["time_table"] = f"decode:{Path(table).name}"
        out.append(cols)
    return out


def write_frontier_table(path: str | os.PathLike, points, refs, time_table=None, *, d_model: int | None = None,
                         d_ff: int | None = None) -> pd.DataFrame:
    """Write :func:`frontier_rows` to ``path`` (CSV), with the time shares of :func:`time_columns` when a
    kernel benchmark table ``time_table`` is given; return the frame."""
    points = list(points)
    df = frontier_rows(points, refs)
    if time_table is not None and len(df):
        times = pd.DataFrame(time_columns(points, time_table, d_model=d_model, d_ff=d_ff))
        df = pd.concat([df, times], axis=1)
    df = with_deployable(df)
    with atomic_path(path, ".csv") as tmp:
        df.to_csv(tmp, index=False, na_rep="NaN")  # a figure without an interval: NaN, never a blank to misread
    log.info("frontier table: %d points -> %s", len(df), path)
    return df


def with_deployable(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a ``deployable`` column after ``line`` (:func:`apc.results.paired.deployable`: False for the
    upper bounds, oracle cluster masks and oracle expert routers)."""
    from apc.results.paired import deployable

    df = df.drop(columns=["deployable"], errors="ignore")
    df.insert(int(df.columns.get_loc("line")) + 1 if "line" in df else 0, "deployable",
              [deployable(l) for l in df["line"]] if "line" in df else [])
    return df


def write_decision_table(path: str | os.PathLike, table: pd.DataFrame, points=None,
                         pairs_path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Write :func:`crossings` of a frontier ``table`` to ``path`` (CSV): per line, the compute share at which it
    reaches 1.05x and 1.25x dense perplexity and a mean KL of 0.05 and 0.2 nats, with the interval's shares;
    with the ``points`` files, also the paired columns of :func:`paired_decision` (and the pairs at ``pairs_path``)."""
    dec = crossings(table) if len(table) else pd.DataFrame(columns=["pset", "line", "family"])
    if points is not None and len(dec):
        dec = paired_decision(dec, points, pairs_path)
    with atomic_path(path, ".csv") as tmp:
        dec.to_csv(tmp, index=False, na_rep="NaN")  # NaN: the line does not get there within its points
    log.info("decision table: %d lines -> %s", len(dec), path)
    return dec


def paired_decision(dec: pd.DataFrame, points, pairs_path: str | os.PathLike | None = None) -> pd.DataFrame:
    """``dec`` (one row per line) with :func:`apc.results.paired_table.decision_columns`: per line its paired
    difference against the best deployable line at each compared share and the verdict; the table of every pair
    (:func:`apc.results.paired_table.paired_table`) is written to ``pairs_path`` when given."""
    from apc.results.paired_table import decision_columns, paired_table

    pairs = paired_table([read_json(p) for p in points])
    if pairs_path is not None:
        with atomic_path(pairs_path, ".csv") as tmp:
            pairs.to_csv(tmp, index=False, na_rep="NaN")
        log.info("paired comparisons: %d pairs -> %s", len(pairs), pairs_path)
    return dec.merge(decision_columns(pairs, dec), on=["pset", "line"], how="left")


#: (line style, marker) per line family: one marker per family on every plot
STYLES = {"threshold": (":", "v"), "cats": ("-", "D"), "teal": ("-", "s"), "wina": ("-", "p"), "larosa": ("-", "h"),
          "griffin": ("--", "X"), "random": (":", "x"),
          "oracle": ("-", "o"), "predicted": ("--", "^"), "neuron": ("-.", "P"), "experts": ("-", "*")}


def _label(line: str) -> str:
    d = parse_line(line)
    if d["family"] == "threshold":
        return "threshold on down_in itself (gate, up in full)"
    if d["family"] == "cats":
        return "CATS (|act(gate)| threshold; gate in full)"
    if d["family"] == "teal":
        what = {"uniform": "uniform", "block": "TEAL's block-wise split",
                "layer-greedy": "shares allocated across layers, not TEAL's"}[d["allocation"]]
        return f"TEAL input and down_in thresholds ({what})"
    if d["family"] == "wina":
        return "WINA (|x| x weight-column norm thresholds)"
    if d["family"] == "larosa":
        return "LaRoSA (top-k of the PCA-rotated input; rotation counted)"
    if d["family"] == "griffin":
        return "GRIFFIN (one mask per sequence from its dense prompt)"
    if d["family"] == "oracle":
        return f"static ({d['scope']})" if d["method"] == "static" else \
            f"oracle {d['method']} K={d['k']} ({d['scope']})"
    if d["family"] == "predicted":
        return f"predicted {d['kind']} top-{d['top_m']} {d['method']} K={d['k']} ({d['scope']})"
    if d["family"] == "neuron":
        return f"neuron predictor x{d['factor']} ({d['kind']} K={d['k']} FLOPs)"
    if d["family"] == "experts":
        return f"neuron experts, {d['router']} router (shared {d['shared']}, E={d['n']})"
    return d["family"]


def _own_tokens(g: pd.DataFrame) -> str:
    """A note for a line scored on fewer tokens than the others (GRIFFIN: those after the prompt)."""
    if g["family"].iloc[0] != "griffin":
        return ""
    dense = (g["ppl"] / g["ratio"]).dropna()
    return f"; {int(g['tokens'].iloc[0])} tokens after the prompt" + (f", dense {dense.iloc[0]:.2f} on them" if len(dense) else "")


def _on_windows(ref: dict, n: int) -> float:
    """A reference perplexity on its first ``n`` windows, the ones the frontier points score
    (every result scores the first windows of the same test split); all of them when it has fewer."""
    from apc.perplexity.intervals import ppl_of

    if n and "window_nll_sum" in ref and n < len(ref["window_nll_sum"]):
        return ppl_of(ref["window_nll_sum"][:n], ref["window_tokens"][:n])
    return float(ref["ppl"])


def _bars(g: pd.DataFrame, col: str, label: str) -> tuple[np.ndarray, np.ndarray, str]:
    """``(y, yerr: (2, n), label)`` of column ``col`` with its ``_lo``, ``_hi`` bounds; a point without an
    interval (NaN bounds: fewer than 20 blocks) gets no bar, and the label says "interval n/a"."""
    y = g[col].to_numpy(float)
    lo = g[f"{col}_lo"].to_numpy(float) if f"{col}_lo" in g else np.full(len(y), np.nan)
    hi = g[f"{col}_hi"].to_numpy(float) if f"{col}_hi" in g else np.full(len(y), np.nan)
    err = np.vstack([y - lo, hi - y])
    missing = ~np.isfinite(err).all(axis=0)
    err[:, missing] = 0.0
    return y, np.clip(err, 0.0, None), label + (" (interval n/a)" if missing.any() else "")


def plot_frontier(table: pd.DataFrame, pset: str, dense: dict | None, sparse: dict | None, path: Path) -> Path:
    """Perplexity (log y, 95 % interval bars) against the FFN compute share spent, one line per line
    of ``pset``; dense at share 1 and true sparse at its kept share as reference lines."""
    from apc.results.plots import new_figure, save_figure

    fig, axes = new_figure(1, 1, w=7.5, h=5.0)
    ax = axes[0, 0]
    rows = table[table["pset"] == pset]
    for line, g in rows.groupby("line", sort=False):
        g = g.sort_values("compute_share")
        y, err, label = _bars(g, "ppl", _label(line) + _own_tokens(g))
        ls, marker = STYLES.get(g["family"].iloc[0], ("-", "o"))
        ax.errorbar(g["compute_share"], y, yerr=err, marker=marker, ms=5, capsize=3, ls=ls, label=label)
    n = int(rows["windows"].max()) if len(rows) else 0
    if dense is not None:
        d = _on_windows(dense, n)
        ax.axhline(d, color="black", lw=1, label=f"dense ({d:.2f})")
    if sparse is not None:
        kept = np.mean(list((sparse.get("kept") or {1.0: 1.0}).values()))
        sp = _on_windows(sparse, n)
        ax.axhline(sp, color="grey", lw=1, ls="--", label=f"true sparse ({sp:.2f}, kept {kept:.2f}, needs the full FFN)")
    ax.set_yscale("log")
    ax.set_xlabel("FFN compute share spent (multiply-adds each product really runs + predictor FLOPs)")
    ax.set_ylabel("perplexity (test, 95 % CI)")
    ax.set_title(f"compute-quality frontier: {pset}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def plot_kl_frontier(table: pd.DataFrame, pset: str, path: Path) -> Path:
    """Mean KL(dense || masked) per token (log y, 95 % interval bars) against the FFN compute share
    spent, one line per line of ``pset``, with the decision table's KL levels as reference lines."""
    from apc.results.plots import new_figure, save_figure

    fig, axes = new_figure(1, 1, w=7.5, h=5.0)
    ax = axes[0, 0]
    rows = table[(table["pset"] == pset) & np.isfinite(table["kl"].to_numpy(float))]
    for line, g in rows.groupby("line", sort=False):
        g = g.sort_values("compute_share")
        y, err, label = _bars(g, "kl", _label(line))
        ls, marker = STYLES.get(g["family"].iloc[0], ("-", "o"))
        ax.errorbar(g["compute_share"], y, yerr=err, marker=marker, ms=5, capsize=3, ls=ls, label=label)
    for level in (0.05, 0.2):
        ax.axhline(level, color="grey", lw=0.8, ls=":")
    ref = rows["kl_reference"].dropna().unique() if "kl_reference" in rows else []
    bound = "" if list(ref) in ([], ["exact"]) else f", {'/'.join(map(str, ref))} lower bound"
    ax.set_yscale("log")
    ax.set_xlabel("FFN compute share spent (multiply-adds each product really runs + predictor FLOPs)")
    ax.set_ylabel(f"mean KL(dense || masked) per token, nats (test, 95 % CI{bound})")
    ax.set_title(f"divergence from dense against compute: {pset}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def plot_time_frontier(table: pd.DataFrame, pset: str, dense: dict | None, path: Path,
                       column: str = "time_share_prefill") -> Path:
    """Perplexity (log y, 95 % interval bars) against the measured time share of each line's masked-FFN
    kernel (``column``: ``time_share_prefill`` at T = 4096 or ``time_share_decode`` at T = 1); lines
    without a kernel are left out; dense at time share 1."""
    from apc.results.plots import new_figure, save_figure

    fig, axes = new_figure(1, 1, w=7.5, h=5.0)
    ax = axes[0, 0]
    rows = table[(table["pset"] == pset) & np.isfinite(table[column].to_numpy(float))]
    for line, g in rows.groupby("line", sort=False):
        g = g.sort_values(column)
        y, err, label = _bars(g, "ppl", _label(line))
        ls, marker = STYLES.get(g["family"].iloc[0], ("-", "o"))
        ax.errorbar(g[column], y, yerr=err, marker=marker, ms=5, capsize=3, ls=ls, label=label)
    if dense is not None:
        n = int(rows["windows"].max()) if len(rows) else 0
        d = _on_windows(dense, n)
        ax.axhline(d, color="black", lw=1, label=f"dense ({d:.2f})")
        ax.axvline(1.0, color="black", lw=0.8, ls=":")
    ax.set_yscale("log")
    if column.startswith("time_share_decode") and "time_share_decode_b16" in table.columns:
        b = column.rsplit("_b", 1)[1] if "_b" in column else "1"
        ax.set_xlabel(f"decode step time over the dense model's (batch {b}; whole model, measured)")
    else:
        tokens = "T = 4096 tokens" if column.endswith("prefill") else "T = 1 token"
        ax.set_xlabel(f"FFN time share of the line's masked kernel ({tokens}; measured, over dense)")
    ax.set_ylabel("perplexity (test, 95 % CI)")
    ax.set_title(f"time-quality frontier: {pset}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save_figure(fig, path)


def plot_batch_view(table: pd.DataFrame, pset: str, share: float, path: Path) -> Path:
    """Share of weight rows read against the batch size B, one line per method at kept share ``share``
    (the frontier share nearest to it per line): the union of B tokens' masks (solid) and, for cluster
    lines, the rows read when each id group reads its own (dashed)."""
    from apc.results.plots import new_figure, save_figure

    fig, axes = new_figure(1, 1, w=7.5, h=5.0)
    ax = axes[0, 0]
    rows = table[table["pset"] == pset]
    sizes = sorted(int(c[len("union_b"):]) for c in rows.columns if c.startswith("union_b"))
    for line, g in rows.groupby("line", sort=False):
        row = g.iloc[int(np.argmin(np.abs(g["share"].to_numpy(float) - share)))]
        ls, marker = STYLES.get(row["family"], ("-", "o"))
        union = [row[f"union_b{b}"] for b in sizes]
        h = ax.plot(sizes, union, marker=marker, ls="-", label=f"{_label(line)} (kept {row['kept_share']:.2f})")
        grouped = [row.get(f"grouped_b{b}", np.nan) for b in sizes]
        if np.isfinite(np.asarray(grouped, float)).any():
            ax.plot(sizes, grouped, marker=marker, ls="--", color=h[0].get_color(), label=f"{_label(line)}: grouped by id")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(b) for b in sizes])
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("B consecutive tokens sharing one weight read")
    ax.set_ylabel("share of a layer's down_in neurons read (mean over layers)")
    ax.set_title(f"batch view: {pset}, kept share ~ {share:g}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")
    return save_figure(fig, path)


def make_frontier_plots(plot_dir: str | os.PathLike, table_path, refs=(), batch_share: float | None = None) -> list[Path]:
    """``frontier_{pset}.png`` for every projection set of the frontier table at ``table_path``,
    ``frontier_kl_{pset}.png`` (KL from dense against compute share) where the table has KL, and
    ``batch_{pset}.png`` (the batch view at ``batch_share``, by default the middle kept share)."""
    table = pd.read_csv(table_path)
    references = [read_json(p) for p in refs]
    dense = next((r for r in references if r.get("mode") == "dense"), None)
    sparse = {r["pset"]: r for r in references if r.get("mode") == "sparse"}
    out = [plot_frontier(table, pset, dense, sparse.get(pset), Path(plot_dir) / f"frontier_{pset}.png")
           for pset in sorted(table["pset"].unique())]
    if "kl" in table.columns and np.isfinite(table["kl"].to_numpy(float)).any():
        out += [plot_kl_frontier(table, pset, Path(plot_dir) / f"frontier_kl_{pset}.png")
                for pset in sorted(table["pset"].unique())]
    if "time_share_prefill" in table.columns and np.isfinite(table["time_share_prefill"].to_numpy(float)).any():
        out += [plot_time_frontier(table, pset, dense, Path(plot_dir) / f"frontier_time_{pset}.png")
                for pset in sorted(table["pset"].unique())]
    for b in DECODE_BATCHES:  # a decode table: whole decode steps at batch 1 and 16
        col = "time_share_decode" if b == 1 else f"time_share_decode_b{b}"
        if "time_share_decode_b16" in table.columns and np.isfinite(table[col].to_numpy(float)).any():
            out += [plot_time_frontier(table, pset, dense, Path(plot_dir) / f"frontier_time_b{b}_{pset}.png", column=col)
                    for pset in sorted(table["pset"].unique())]
    if any(c.startswith("union_b") for c in table.columns):
        shares = sorted(table.loc[table["family"] != "cats", "share"].unique())
        share = batch_share if batch_share is not None else (shares[len(shares) // 2] if shares else 0.6)
        out += [plot_batch_view(table, pset, share, Path(plot_dir) / f"batch_{pset}.png")
                for pset in sorted(table["pset"].unique())]
    return out
