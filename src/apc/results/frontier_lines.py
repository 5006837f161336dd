"""The lines of a frontier table as its plots see them: family, deployable or upper bound, legend label and
style, which lines a static plot draws (:func:`pick_lines`: the best deployable line of each family, then the best
upper bound of each family that has one) and the true-sparse reference ratio."""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from apc.lines import all_lines, parse
from apc.results.paired import deployable


def family_order() -> list[str]:
    """The line families in legend order (the registry's plot order, :attr:`apc.lines.Line.order`)."""
    return list(all_lines())


#: ratios above this are drawn at the top edge with their value printed
Y_CAP = 50.0
PICK_RULE = ("Drawn: dense, the best deployable line of each family and the best upper bound of each family "
             "that has one (hollow, dashed). Best = the lowest mean difference of log ratio to dense against the "
             "family's other candidates, each pair compared at 9 compute shares over the range both cover (linear "
             "interpolation). Every line: frontier.html.")


def frontier_shares(table: pd.DataFrame) -> list[float]:
    """The frontier's kept shares in a table: those most of its lines have (a line placed at other kept shares,
    as CATS is at the frontier's compute shares, leaves them out)."""
    per_share = table.groupby("share")["line"].nunique()
    return sorted(float(s) for s in per_share[per_share * 2 > per_share.max()].index)


def line_family(line: str) -> str:
    """The family a line is drawn and picked in."""
    return parse(line).family


def line_label(line: str) -> str:
    """The legend text of a line (:meth:`apc.lines.Line.label`; upper bounds say so)."""
    spec = parse(line)
    text = spec.impl.label(spec) or spec.family
    return text if deployable(line) else f"upper bound: {text}"


def line_style(line: str) -> dict:
    """Matplotlib keywords of a line: its family's colour and marker (:attr:`apc.lines.Line.style`); an upper
    bound hollow and dashed, in the colour and marker of the family it bounds; a line whose compute share covers
    every linear layer (:meth:`apc.lines.Line.compute_scope`) dotted."""
    spec = parse(line)
    impl = spec.impl
    up = not deployable(line)
    shown = all_lines().get(impl.bounds, impl) if up and impl.bounds else impl
    _, marker, colour = shown.style
    ls = "--" if up else (":" if impl.compute_scope(spec) == "model" else "-")
    return {"color": colour, "marker": marker, "ls": ls, "mfc": "white" if up else colour,
            "lw": 1.2 if up else 1.6, "ms": 6}


def _curve(rows: pd.DataFrame, line: str, x: str) -> pd.DataFrame:
    g = rows[rows["line"] == line]
    ok = np.isfinite(g[x].to_numpy(float)) & (g["ratio"].to_numpy(float) > 0)
    return g[ok].sort_values(x)


def _paired_gap(a: pd.DataFrame, b: pd.DataFrame, x: str) -> float | None:
    """Mean of log ratio(a) - log ratio(b) at 9 points of the ``x`` range both cover (linear interpolation);
    None where the ranges do not overlap."""
    lo, hi = max(a[x].min(), b[x].min()), min(a[x].max(), b[x].max())
    if lo > hi:
        return None
    grid = np.linspace(lo, hi, 9)
    ya = np.interp(grid, a[x].to_numpy(float), np.log(a["ratio"].to_numpy(float)))
    yb = np.interp(grid, b[x].to_numpy(float), np.log(b["ratio"].to_numpy(float)))
    return float(np.mean(ya - yb))


def best_line(rows: pd.DataFrame, lines: Iterable[str], x: str = "compute_share") -> str | None:
    """The line of ``lines`` with the lowest mean :func:`_paired_gap` against the others it shares an ``x``
    range with; lines that share none with any other are candidates only when no line does, and are then ranked
    by their mean log ratio over the kept ``share`` values they all have (else over their own points).
    Ties: the first line name; None when no line has a point."""
    curves = {ln: _curve(rows, ln, x) for ln in lines}
    curves = {ln: c for ln, c in sorted(curves.items()) if len(c)}
    if len(curves) <= 1:
        return next(iter(curves), None)
    gaps = {a: [g for b in curves if b != a if (g := _paired_gap(curves[a], curves[b], x)) is not None]
            for a in curves}
    paired = {a: float(np.mean(g)) for a, g in gaps.items() if g}
    if paired:
        return min(paired, key=lambda a: paired[a])
    common = set.intersection(*(set(c["share"].round(6)) for c in curves.values()))

    def own(c: pd.DataFrame) -> float:
        logr = np.log(c["ratio"].to_numpy(float))
        keep = c["share"].round(6).isin(common).to_numpy() if common else np.ones(len(c), bool)
        return float(np.mean(logr[keep]))

    return min(curves, key=lambda a: own(curves[a]))


def compute_scope(rows: pd.DataFrame, line: str) -> str:
    """The layers ``line``'s compute share covers: ``ffn`` (no ``compute_scope`` column or value) or ``model``."""
    if "compute_scope" not in rows:
        return "ffn"
    v = rows.loc[rows["line"] == line, "compute_scope"]
    return str(v.iloc[0]) if len(v) and isinstance(v.iloc[0], str) else "ffn"


def pick_lines(rows: pd.DataFrame, x: str = "compute_share") -> list[str]:
    """The lines a static plot draws, in legend order: per family (and compute scope: a line whose compute share
    covers every linear layer is not ranked against the FFN-scope lines) the :func:`best_line` of its deployable
    lines, then per family the best of its upper bounds."""
    lines = list(dict.fromkeys(rows["line"]))
    order = family_order()
    fams = sorted({(line_family(ln), compute_scope(rows, ln)) for ln in lines},
                  key=lambda f: (order.index(f[0]) if f[0] in order else len(order), f))
    best, bounds = [], []
    for fam in fams:
        members = [ln for ln in lines if (line_family(ln), compute_scope(rows, ln)) == fam]
        for want, out in ((True, best), (False, bounds)):
            pick = best_line(rows, [ln for ln in members if deployable(ln) == want], x)
            if pick is not None:
                out.append(pick)
    return best + bounds


def _on_windows(ref: dict, n: int) -> float:
    """A reference perplexity on its first ``n`` windows, the ones the frontier points score
    (every result scores the first windows of the same test split); all of them when it has fewer."""
    from apc.perplexity.intervals import ppl_of

    if n and "window_nll_sum" in ref and n < len(ref["window_nll_sum"]):
        return ppl_of(ref["window_nll_sum"][:n], ref["window_tokens"][:n])
    return float(ref["ppl"])


def sparse_ratio(rows: pd.DataFrame, dense: dict | None, sparse: dict | None) -> float | None:
    """True sparse perplexity over dense's, both on the windows the points score (None without both)."""
    if dense is None or sparse is None:
        return None
    n = int(rows["windows"].max()) if len(rows) and "windows" in rows else 0
    return _on_windows(sparse, n) / _on_windows(dense, n)
