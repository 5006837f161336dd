"""Tables of paired comparisons (:mod:`apc.results.paired`) over the frontier's points.

:func:`paired_table`: per projection set and compute share, every pair of lines placed at that share
(a point within the tolerance, or both lines interpolated on their own points), their paired
differences ``line - against`` with 95 % intervals.  :func:`decision_columns`: per line, its
difference against the best deployable line at each share and the verdict that follows.
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pandas as pd

from apc.results.paired import METRICS, TOLERANCE, at_share, deployable, paired_difference, verdict

__all__ = ["SHARES", "PAIR_COLUMNS", "paired_table", "lookup", "decision_columns"]

#: the compute shares at which lines are compared
SHARES = (0.4, 0.6, 0.8)
PAIR_COLUMNS = ["pset", "share", "line", "against", "deployable", "against_deployable", "compute_share",
                "against_compute_share", "tokens", "units"] + \
    [f"d_{m}{s}" for m in METRICS for s in ("", "_lo", "_hi")]


def paired_table(points: list[dict], shares=SHARES, tol: float = TOLERANCE, **boot) -> pd.DataFrame:
    """Every unordered pair of lines of each projection set placed at each of ``shares`` (:func:`at_share` with
    ``tol``): columns :data:`PAIR_COLUMNS` (``compute_share``: the point's, or the share itself when
    interpolated; ``d_{metric}``: ``line - against`` with its interval).  ``points``: point dicts with ``pset``,
    ``line``, ``compute_share`` and the per-token arrays; ``boot``: :func:`paired_difference`'s keywords.  Lines
    whose compute shares cover other layers (``compute_scope``: ``ffn`` by default, ``model``) are not paired."""
    by_line: dict[tuple[str, str], list[dict]] = {}
    scope: dict[str, str] = {}  # a line's compute scope: lines are compared at equal compute of the same layers only
    for p in points:
        by_line.setdefault((p["pset"], p["line"]), []).append(p)
        scope[p["line"]] = p.get("compute_scope", "ffn")
    cache: dict = {}
    rows = []
    for pset in dict.fromkeys(k[0] for k in by_line):
        lines = [k[1] for k in by_line if k[0] == pset]
        for s in shares:
            places = {l: at_share(by_line[pset, l], s, tol) for l in lines}
            placed = [l for l in lines if places[l] is not None]
            for a, b in combinations(placed, 2):
                if scope[a] != scope[b]:
                    continue
                d = paired_difference(places[a], places[b], cache=cache, **boot)
                row = {"pset": pset, "share": float(s), "line": a, "against": b, "deployable": deployable(a),
                       "against_deployable": deployable(b), "compute_share": places[a].compute_share,
                       "against_compute_share": places[b].compute_share, "tokens": d["tokens"], "units": d["units"]}
                for m in METRICS:
                    row[f"d_{m}"], row[f"d_{m}_lo"], row[f"d_{m}_hi"] = d.get(m, (math.nan,) * 3)
                rows.append(row)
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def lookup(pairs: pd.DataFrame, share: float, line: str, against: str, metric: str = "log_ratio",
           pset: str | None = None) -> tuple[float, float, float, int] | None:
    """``(diff, lo, hi, tokens)`` of ``line - against`` at ``share`` from a :func:`paired_table` (either order is
    stored once; the other is its negation); None when the pair is not in the table."""
    g = pairs[np.isclose(pairs["share"].to_numpy(float), share)]
    if pset is not None:
        g = g[g["pset"] == pset]
    c = f"d_{metric}"
    hit = g[(g["line"] == line) & (g["against"] == against)]
    if len(hit):
        r = hit.iloc[0]
        return float(r[c]), float(r[c + "_lo"]), float(r[c + "_hi"]), int(r["tokens"])
    hit = g[(g["line"] == against) & (g["against"] == line)]
    if len(hit):
        r = hit.iloc[0]
        return -float(r[c]), -float(r[c + "_hi"]), -float(r[c + "_lo"]), int(r["tokens"])
    return None


def _ranked(pairs: pd.DataFrame, share: float, lines: list[str], metric: str, pset: str) -> list[str]:
    """``lines`` best first by their paired difference against the one scored on the most tokens (a lower log
    ratio or KL, a higher top-1 is better); lines without a pair at ``share`` are left out."""
    if not lines:
        return []
    g = pairs[(pairs["pset"] == pset) & np.isclose(pairs["share"].to_numpy(float), share)]
    most = lambda l: g.loc[(g["line"] == l) | (g["against"] == l), "tokens"].max()
    ref = max(lines, key=most)  # a line on every token, so that the differences share one set of tokens
    score = {ref: 0.0}
    lines = [ref] + [l for l in lines if l != ref]
    for l in lines[1:]:
        d = lookup(pairs, share, l, ref, metric, pset)
        if d is not None:
            score[l] = d[0]
    sign = -1.0 if metric == "top1" else 1.0
    return sorted(score, key=lambda l: sign * score[l])


def decision_columns(pairs: pd.DataFrame, lines: pd.DataFrame, shares=SHARES, metric: str = "log_ratio") -> pd.DataFrame:
    """Per row of ``lines`` (columns ``pset, line``): ``deployable`` and, per share s of ``shares``, ``best_{s}``
    (the best deployable line there by ``metric``), ``d_{m}_{s}``, ``d_{m}_{s}_lo``, ``d_{m}_{s}_hi`` (this
    line minus that best line, for every metric m) and ``verdict_{s}``: ``best`` (the best line, and its
    interval against the runner-up excludes 0), ``tie`` (with the best line, or the best line whose interval
    against the runner-up holds 0), ``worse``, ``better, upper bound`` (a line that is not deployable and beats
    the best line), ``better`` (a deployable line paired on other tokens than the ranking's, GRIFFIN's, that
    beats the best line on their common tokens), ``n/a`` (no place at s)."""
    out = lines[["pset", "line"]].copy()
    out["deployable"] = [deployable(l) for l in out["line"]]
    for s in shares:
        cols: dict[str, list] = {f"best_{s:g}": []}
        for m in METRICS:
            for suf in ("", "_lo", "_hi"):
                cols[f"d_{m}_{s:g}{suf}"] = []
        cols[f"verdict_{s:g}"] = []
        ranked: dict[str, tuple[list[str], list[str]]] = {}  # per pset: the lines placed at s, the deployable ranked
        for pset in out["pset"].unique():
            g = pairs[(pairs["pset"] == pset) & np.isclose(pairs["share"].to_numpy(float), s)]
            placed = list(dict.fromkeys(list(g["line"]) + list(g["against"])))
            ranked[pset] = placed, _ranked(pairs, s, [l for l in placed if deployable(l)], metric, pset)
        for pset, line in zip(out["pset"], out["line"]):
            placed, dep = ranked[pset]
            best = dep[0] if dep else None
            cols[f"best_{s:g}"].append(best)
            for m in METRICS:
                d = (0.0, 0.0, 0.0, 0) if line == best else \
                    (lookup(pairs, s, line, best, m, pset) if best else None) or (math.nan,) * 4
                for suf, v in zip(("", "_lo", "_hi"), d[:3]):
                    cols[f"d_{m}_{s:g}{suf}"].append(v)
            if best is None or line not in placed:
                v = "n/a"
            elif line == best:
                ru = lookup(pairs, s, dep[1], best, metric, pset) if len(dep) > 1 else None
                v = "best" if ru is None or verdict(*ru[:3], metric) == "worse" else \
                    ("tie" if verdict(*ru[:3], metric) == "tie" else "n/a")
            else:
                v = verdict(*lookup(pairs, s, line, best, metric, pset)[:3], metric)
                if v == "better" and not deployable(line):
                    v = "better, upper bound"
            cols[f"verdict_{s:g}"].append(v)
        for k, v in cols.items():
            out[k] = v
    return out
