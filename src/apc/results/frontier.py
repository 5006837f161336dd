"""The frontier table (one row per point); its plots: :mod:`apc.results.frontier_plots`.

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
from apc.common.progress import get_logger
from apc.lines import parse

log = get_logger("apc.results.frontier")

COLUMNS = ["pset", "line", "family", "mode", "share", "ppl", "ppl_lo", "ppl_hi", "ratio", "ratio_lo", "ratio_hi",
           "kl", "kl_lo", "kl_hi", "top1", "top1_lo", "top1_hi", "kl_reference", "kl_topk",
           "tokens", "windows", "units", "kept_share", "gate_share", "up_share", "down_share", "ffn_flops_share",
           "predictor_flops_share", "rotation_flops_share", "compute_share", "cells"]


def point_columns(d: dict) -> dict[str, float]:
    """The per-product FLOPs shares (mean over layers), the batch view (mean over the masked projections) and the
    generation agreement of one point file: ``{gate_share, up_share, down_share, union_b{B}, grouped_b{B},
    gen_*}``; a point of ``model`` compute scope adds ``compute_scope``, ``ffn_compute_share`` and
    ``attn_qkv_share``/``attn_o_share`` (absent from a table of FFN-scope lines alone)."""
    out = {f"{prod}_share": float(np.mean(v)) for prod, v in (d.get("product_shares") or {}).items()}
    batch = d.get("batch") or {}
    sizes = sorted({int(b) for v in batch.values() for b in v})
    for b in sizes:
        union = [v[str(b)]["union"]["mean"] for v in batch.values() if str(b) in v]
        grouped = [v[str(b)]["grouped"]["mean"] for v in batch.values() if str(b) in v and v[str(b)]["grouped"]]
        out[f"union_b{b}"] = float(np.mean(union))
        out[f"grouped_b{b}"] = float(np.mean(grouped)) if grouped else float("nan")
    from apc.perplexity.generation import COLUMNS as GENERATION_COLUMNS  # the generation agreement, where measured

    gen = d.get("generation") or {}
    out.update({k: float(gen[k]) for k in GENERATION_COLUMNS if k in gen})
    if d.get("compute_scope", "ffn") != "ffn":  # compute over every linear layer: the FFN's share beside it
        out.update(compute_scope=d["compute_scope"], ffn_compute_share=float(d["ffn_compute_share"]),
                   **{f"attn_{k}_share": float(v) for k, v in (d.get("attn_shares") or {}).items()})
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


def _kernel(line: str) -> str | None:
    """The masked-FFN kernel (:mod:`apc.deploy`) that runs a line (its registry entry); None: no kernel of its own."""
    return parse(line).impl.kernel


DECODE_TOKENS, PREFILL_TOKENS = 1, 4096


def _groups(d: dict) -> int:
    """A cluster point's measured group count: distinct ids used on the scored tokens (mean over layers)."""
    counts = [c for per_layer in (d.get("id_counts") or {}).values() for c in per_layer]
    return max(1, int(round(np.mean([np.count_nonzero(c) for c in counts])))) if counts else 1


def _decode_line(line: str) -> str | None:
    """The ``bench_decode.py`` line that times a line (its registry entry); None: no kernel of its own."""
    spec = parse(line)
    return spec.impl.decode_line(spec)


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
        kernel = _kernel(d["line"])
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
        line = _decode_line(d["line"])
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



def write_generation_samples(path: str | os.PathLike, points: Iterable[str | os.PathLike]) -> dict:
    """Write ``{"prompts": [{index, window, start, prompt, continuations: {dense and every point's line at its
    share: {text, prefix}}}]}`` from the point files' ``generation.samples`` (the same prompts in every point);
    each point's entry is keyed ``{line}@{share}`` and listed under ``points`` with its compute share."""
    from apc.common.atomic import write_json

    prompts, listed = {}, []
    for p in points:
        d = read_json(p)
        samples = (d.get("generation") or {}).get("samples") or []
        key = f"{d['line']}@{d['share']:g}"
        listed.append({"key": key, "pset": d["pset"], "line": d["line"], "share": d["share"],
                       "compute_share": d["compute_share"], "gen_agree": d["generation"]["gen_agree"] if samples else None})
        for s in samples:
            row = prompts.setdefault(s["index"], {k: s[k] for k in ("index", "window", "start", "prompt")}
                                     | {"continuations": {"dense": s["continuations"]["dense"]}})
            row["continuations"][key] = s["continuations"][d["line"]]
    out = {"prompts": [prompts[k] for k in sorted(prompts)], "points": listed}
    write_json(path, out)
    return out
