"""One results table: every evaluation cell and split, with its perplexities beside it.

Rows: one per (projection, scope, method, k, seed, split), taken from the ``"all"``
rows of ``eval/{proj}/{scope}/{method}-k{k}-s{seed}.csv``.  Columns:

* the cell identity and every metric column of the CSV (recall, paper_precision,
  precision, f1, centroid_density, data_density, compute_share, random_recall, ...);
* from the clustering sidecar, when present: ``iterations``, ``converged``,
  ``cluster_wall_time_s``;
* from each perplexity cell ``ppl/{pset}/{scope}/{method}-k{k}-s{seed}.json`` with the
  same (scope, method, k, seed): ``ppl_{pset}_{mode}`` and the kept share of each
  projection, ``kept_{pset}_{mode}_{proj}``, on the rows of the projections that
  the set masks (a set masks its projections together, so its values repeat on
  each of their rows and are blank on the others);
* references: ``ppl_dense`` and ``ppl_sparse_{pset}`` (plus ``kept_sparse_{pset}_{proj}``);
* ``lift`` = ``recall - random_recall``: coverage gained over a random mask of the
  same density (0 for a mask that knows nothing; the table is ranked by it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd

from apc.common.atomic import atomic_path, read_json
from apc.common.progress import get_logger

log = get_logger("apc.results.summary")

ID_COLS = ["projection", "scope", "method", "k", "seed", "split"]
_CELL_RE = re.compile(r"(?P<method>.+)-k(?P<k>\d+)-s(?P<seed>-?\d+)")


def read_eval(outdir: str | os.PathLike) -> pd.DataFrame:
    """All rows (per layer and ``"all"``) of every eval CSV, concatenated; empty frame if none.

    ``layer`` stays a string column ("all" or the layer index) so both kinds of row survive.
    """
    paths = sorted(Path(outdir).glob("eval/*/*/*.csv"))
    frames = []
    for path in paths:
        df = pd.read_csv(path, dtype={"layer": str})
        if df.empty:
            continue
        proj, scope = path.parts[-3], path.parts[-2]
        m = _CELL_RE.fullmatch(path.stem)
        for col, val in (("projection", proj), ("scope", scope),
                         ("method", m["method"] if m else None),
                         ("k", int(m["k"]) if m else None), ("seed", int(m["seed"]) if m else None)):
            if col not in df.columns and val is not None:
                df[col] = val
        frames.append(df)
    if not frames:
        return pd.DataFrame()
    df = pd.concat(frames, ignore_index=True)
    df["k"] = df["k"].astype(int)
    df["seed"] = df["seed"].astype(int)
    return df


def _ppl_columns(outdir: Path) -> tuple[pd.DataFrame, dict, dict]:
    """Perplexity cells as one wide frame keyed by (scope, method, k, seed); reference values;
    the projections of each pset."""
    rows: dict[tuple, dict] = {}
    psets: dict[str, list] = {}
    for path in sorted(outdir.glob("ppl/*/*/*.json")):
        d = read_json(path)
        pset, scope = d.get("pset", path.parts[-3]), d.get("scope", path.parts[-2])
        psets[pset] = list(d.get("projections") or [])
        key = (scope, d["method"], int(d["k"]), int(d["seed"]))
        row = rows.setdefault(key, {})
        for mode, md in (d.get("modes") or {}).items():
            row[f"ppl_{pset}_{mode}"] = md.get("ppl")
            for proj, kept in (md.get("kept") or {}).items():
                row[f"kept_{pset}_{mode}_{proj}"] = kept
    ref: dict[str, float] = {}
    dense = outdir / "ppl" / "dense.json"
    if dense.exists():
        ref["ppl_dense"] = read_json(dense).get("ppl")
    for path in sorted(outdir.glob("ppl/sparse-*.json")):
        d = read_json(path)
        pset = d.get("pset", path.stem[len("sparse-"):])
        ref[f"ppl_sparse_{pset}"] = d.get("ppl")
        for proj, kept in (d.get("kept") or {}).items():
            ref[f"kept_sparse_{pset}_{proj}"] = kept
    if not rows:
        return pd.DataFrame(columns=["scope", "method", "k", "seed"]), ref, psets
    frame = pd.DataFrame([{"scope": s, "method": m, "k": k, "seed": sd, **v} for (s, m, k, sd), v in rows.items()])
    ppl_cols = sorted(c for c in frame.columns if c.startswith("ppl_"))
    kept_cols = sorted(c for c in frame.columns if c.startswith("kept_"))
    return frame[["scope", "method", "k", "seed", *ppl_cols, *kept_cols]], ref, psets


def _cluster_columns(outdir: Path) -> pd.DataFrame:
    rows = []
    for path in sorted(outdir.glob("clusters/*/*/*/centroids.json")):
        d = read_json(path)
        m = _CELL_RE.fullmatch(path.parent.name)
        rows.append({"projection": d.get("projection", path.parts[-4]), "scope": d.get("scope", path.parts[-3]),
                     "method": d.get("method", m["method"] if m else None),
                     "k": int(d.get("k", m["k"] if m else -1)), "seed": int(d.get("seed", m["seed"] if m else -1)),
                     "iterations": d.get("iterations"), "converged": d.get("converged"),
                     "cluster_wall_time_s": d.get("wall_time_s")})
    return pd.DataFrame(rows, columns=["projection", "scope", "method", "k", "seed", "iterations",
                                       "converged", "cluster_wall_time_s"])


def build_summary(outdir: str | os.PathLike) -> pd.DataFrame:
    """The summary table (see module docstring); an empty frame when no eval results exist yet."""
    out = Path(outdir)
    ev = read_eval(out)
    if ev.empty:
        return pd.DataFrame(columns=ID_COLS)
    df = ev[ev["layer"] == "all"].drop(columns=["layer"]).copy()
    metric_cols = [c for c in df.columns if c not in ID_COLS]
    df = df[ID_COLS + metric_cols]
    df = df.merge(_cluster_columns(out), on=["projection", "scope", "method", "k", "seed"], how="left")
    df["lift"] = df["recall"] - df["random_recall"]
    ppl, ref, psets = _ppl_columns(out)
    if len(ppl):
        df = df.merge(ppl, on=["scope", "method", "k", "seed"], how="left")
        for pset, projs in psets.items():
            cols = [c for c in df.columns if c.startswith((f"ppl_{pset}_", f"kept_{pset}_"))]
            if projs:
                df.loc[~df["projection"].isin(projs), cols] = float("nan")
    for col, val in ref.items():
        df[col] = val
    if df.duplicated(ID_COLS).any():
        dup = df[df.duplicated(ID_COLS, keep=False)][ID_COLS].drop_duplicates()
        raise ValueError(f"duplicate summary rows in {out}: {dup.to_dict('records')[:5]}")
    return df.sort_values(ID_COLS, kind="stable").reset_index(drop=True)


def write_summary(outdir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Write :func:`build_summary` of ``outdir`` as CSV to ``path`` atomically; return ``path``."""
    df = build_summary(outdir)
    path = Path(path)
    with atomic_path(path, ".csv") as tmp:
        df.to_csv(tmp, index=False)
    log.info("summary: %d rows -> %s", len(df), path)
    return path
