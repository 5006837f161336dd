"""One results table: every evaluation cell and split, with its perplexities beside it.

Rows: one per (projection, scope, method, k, seed, split), taken from the ``"all"``
rows of ``eval/{proj}/{scope}/{method}-k{k}-s{seed}.csv``.  Columns:

* the cell identity and every metric column of the CSV (recall, paper_precision,
  precision, f1, centroid_density, data_density, compute_share, random_recall, ...);
* from the clustering sidecar, when present: ``iterations``, ``converged``,
  ``cluster_wall_time_s``;
* from each perplexity cell ``ppl/{pset}/{scope}/{method}-k{k}-s{seed}.json`` with the
  same (scope, method, k, seed): ``ppl_{pset}_{mode}`` with its 95 % block-bootstrap interval
  (``_lo``, ``_hi``; NaN below 20 blocks), the paired ratio to dense on the same tokens
  (``ratio_{pset}_{mode}``, ``_lo``, ``_hi``), the mean KL from dense in nats and the top-1
  agreement with dense (``kl_{pset}_{mode}``, ``top1_{pset}_{mode}``, each with ``_lo``, ``_hi``)
  and the kept share of each projection,
  ``kept_{pset}_{mode}_{proj}``, on the rows of the projections that the set masks (a
  set masks its projections together, so its values repeat on each of their rows and
  are blank on the others);
* references: ``ppl_dense`` and ``ppl_sparse_{pset}`` (with intervals, the sparse ratio to
  dense, and ``kept_sparse_{pset}_{proj}``);
* ``groups`` (G: 1, or the neuron groups of a product cell, whose ``k`` is K per group) and
  ``id_bits`` = G * log2(K), the cluster-id budget of a token;
* ``mass_recall`` (from the CSV, where magnitudes are stored): the share of |x| the mask keeps;
* ``lift`` = ``recall - random_recall``: coverage gained over a random mask of the
  same density (0 for a mask that knows nothing; the table is ranked by it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from apc.common.atomic import atomic_path, read_json
from apc.common.layout import Cell
from apc.common.progress import get_logger
from apc.perplexity.intervals import BLOCK_TOKENS, ppl_of, ppl_ratio

log = get_logger("apc.results.summary")

ID_COLS = ["projection", "scope", "method", "k", "density", "seed", "split"]
CELL_COLS = ["projection", "scope", "method", "k", "density", "seed"]
GROUP_COLS = ["scope", "method", "k", "density", "seed"]


def read_eval(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """All rows (per layer and ``"all"``) of the given eval CSVs, concatenated; empty frame if none.

    ``layer`` stays a string column ("all" or the layer index) so both kinds of row survive.
    """
    frames = [df for df in (pd.read_csv(p, dtype={"layer": str}) for p in paths) if not df.empty]
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    df["k"] = df["k"].astype(int)
    df["seed"] = df["seed"].astype(int)
    df["density"] = df["density"].astype(float)
    return df


#: Figures of a masked result beside its perplexity: divergence from dense (:mod:`apc.perplexity.divergence`)
DIVERGENCE = ("kl", "top1")


def interval_columns(prefix: str, result: dict, dense: dict | None) -> dict:
    """``{prefix}``, ``_lo``, ``_hi`` of a perplexity result, its paired ratio to dense, and its KL from
    dense and top-1 agreement with dense (``kl{rest}``, ``top1{rest}`` with ``_lo``, ``_hi``, where
    ``prefix`` is ``ppl{rest}``).

    Every result scores the first windows of the same test split, so a result on fewer tokens than
    dense is paired with dense's first tokens; on more there is no pairing and no ratio.  The ratio's
    interval resamples the same blocks on both sides (:func:`apc.perplexity.intervals.ppl_ratio`);
    NaN bounds where the result has fewer than 20 blocks or no per-token NLLs.
    """
    rest = prefix[len("ppl"):]
    out = {prefix: result.get("ppl"), f"{prefix}_lo": result.get("ppl_lo"), f"{prefix}_hi": result.get("ppl_hi")}
    if dense is not None and "window_nll_sum" in result and "window_nll_sum" in dense:
        n = len(result["window_nll_sum"])
        if n <= len(dense["window_nll_sum"]):
            name = "ratio" + rest
            if "token_nll" in result and "token_nll" in dense:
                t = len(result["token_nll"])
                r, lo, hi = ppl_ratio(result["token_nll"], dense["token_nll"][:t],
                                      block=int(result.get("block_tokens", BLOCK_TOKENS)))
            else:
                r = ppl_of(result["window_nll_sum"], result["window_tokens"]) / \
                    ppl_of(dense["window_nll_sum"][:n], dense["window_tokens"][:n])
                lo = hi = float("nan")
            out.update({name: r, f"{name}_lo": lo, f"{name}_hi": hi})
    for fig in DIVERGENCE:
        if fig in result:
            out.update({f"{fig}{rest}{s}": result.get(f"{fig}{s}") for s in ("", "_lo", "_hi")})
    return out


def reference_columns(ref_paths: Iterable[str | os.PathLike]) -> tuple[dict, dict | None]:
    """``ppl_dense`` and ``ppl_sparse_{pset}`` columns (with intervals and ratios); the dense result."""
    results = [read_json(p) for p in ref_paths]
    dense = next((r for r in results if r.get("mode") == "dense"), None)
    ref: dict = {}
    if dense is not None:
        ref.update(interval_columns("ppl_dense", dense, None))
    for d in results:
        if d.get("mode") == "sparse":
            ref.update(interval_columns(f"ppl_sparse_{d['pset']}", d, dense))
            for proj, kept in (d.get("kept") or {}).items():
                ref[f"kept_sparse_{d['pset']}_{proj}"] = kept
    return ref, dense


def _ppl_columns(paths: Iterable[str | os.PathLike], dense: dict | None) -> tuple[pd.DataFrame, dict]:
    """Perplexity cells as one wide frame keyed by (scope, method, k, density, seed); each pset's projections."""
    rows: dict[tuple, dict] = {}
    psets: dict[str, list] = {}
    for path in paths:
        d = read_json(path)
        psets[d["pset"]] = list(d["projections"])
        row = rows.setdefault((d["scope"], d["method"], int(d["k"]), float(d["density"]), int(d["seed"])), {})
        for mode, md in (d.get("modes") or {}).items():
            row.update(interval_columns(f"ppl_{d['pset']}_{mode}", md, dense))
            for proj, kept in (md.get("kept") or {}).items():
                row[f"kept_{d['pset']}_{mode}_{proj}"] = kept
    if not rows:
        return pd.DataFrame(columns=GROUP_COLS), psets
    frame = pd.DataFrame([{**dict(zip(GROUP_COLS, key)), **v} for key, v in rows.items()])
    cols = sorted(c for c in frame.columns if c.startswith(("ppl_", "ratio_", "kl_", "top1_")))
    kept_cols = sorted(c for c in frame.columns if c.startswith("kept_"))
    return frame[[*GROUP_COLS, *cols, *kept_cols]], psets


def _cluster_columns(meta_paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    rows = []
    for path in meta_paths:
        d = read_json(path)
        k = int(d.get("k_per_group", d["k"]))  # a product cell's array holds G * K rows
        rows.append({"projection": d["projection"], "scope": d["scope"], "method": d["method"], "k": k,
                     "density": float(d["target_density"]), "seed": int(d["seed"]), "iterations": d.get("iterations"), "converged": d.get("converged"),
                     "cluster_wall_time_s": d.get("wall_time_s")})
    return pd.DataFrame(rows, columns=[*CELL_COLS, "iterations", "converged", "cluster_wall_time_s"])


def build_summary(evals, cluster_metas=(), refs=(), ppl_cells=()) -> pd.DataFrame:
    """The summary table (see module docstring) of exactly the given result files.

    ``evals``: eval CSVs; ``cluster_metas``: centroid sidecars; ``refs``: dense and sparse
    perplexity results; ``ppl_cells``: perplexity cell results.  Empty frame without evals.
    """
    ev = read_eval(evals)
    if ev.empty:
        return pd.DataFrame(columns=ID_COLS)
    df = ev[ev["layer"] == "all"].drop(columns=["layer"]).copy()
    metric_cols = [c for c in df.columns if c not in ID_COLS]
    df = df[ID_COLS + metric_cols]
    df = df.merge(_cluster_columns(cluster_metas), on=CELL_COLS, how="left")
    df["lift"] = df["recall"] - df["random_recall"]
    df["groups"] = df["groups"].fillna(1).astype(int) if "groups" in df else 1
    df["id_bits"] = df["groups"] * np.log2(df["k"])
    ref, dense = reference_columns(refs)
    ppl, psets = _ppl_columns(ppl_cells, dense)
    if len(ppl):
        df = df.merge(ppl, on=GROUP_COLS, how="left")
        for pset, projs in psets.items():
            cols = [c for c in df.columns if c.startswith(tuple(f"{f}_{pset}_" for f in ("ppl", "ratio", "kl", "top1", "kept")))]
            df.loc[~df["projection"].isin(projs), cols] = float("nan")
    for col, val in ref.items():
        df[col] = val
    if df.duplicated(ID_COLS).any():
        dup = df[df.duplicated(ID_COLS, keep=False)][ID_COLS].drop_duplicates()
        raise ValueError(f"duplicate summary rows: {dup.to_dict('records')[:5]}")
    return df.sort_values(ID_COLS, kind="stable").reset_index(drop=True)


def write_summary(path: str | os.PathLike, evals, cluster_metas=(), refs=(), ppl_cells=()) -> Path:
    """Write :func:`build_summary` of the given files as CSV to ``path`` atomically; return ``path``."""
    df = build_summary(evals, cluster_metas, refs, ppl_cells)
    path = Path(path)
    with atomic_path(path, ".csv") as tmp:
        df.to_csv(tmp, index=False)
    log.info("summary: %d rows -> %s", len(df), path)
    return path
