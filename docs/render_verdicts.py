"""Verdicts of the docs: which line is best, or which lines tie, among the deployable lines at a compute share.

Rules every verdict here follows:

* Only deployable lines (:func:`apc.results.paired.deployable`) are ranked; an upper bound (an oracle cluster
  mask, an oracle expert router) is named as one, beside the verdict, and never called best.
* A line takes part at a compute share only through a point within :data:`TOL` of it (the tolerance is
  printed in the sentence).
* "X is best" only where the interval of X against the runner-up excludes 0: the paired block-bootstrap
  interval of their difference (``frontier_paired.csv`` of the run, :mod:`apc.results.paired_table`) where the
  run kept it, else (a run collected before the paired table) only where their unpaired 95 % intervals do
  not overlap, and the sentence says which.  Otherwise "X and Y tie", with the interval.

:func:`reversal_sentence` compares two runs and says where a finding of one reverses in the other.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from apc.results.paired import deployable

#: compute tolerance of a point-based verdict: a line takes part at share s through a point within TOL of s
TOL = 0.05
#: the shares the paired table compares lines at (:data:`apc.results.paired_table.SHARES`)
PAIRED_SHARES = (0.4, 0.6, 0.8)


# ---------------------------------------------------------------- formatting

def _digits_fmt(fmt: str, extra: int) -> str:
    """``fmt`` (one ``{:.Nf}`` or ``{:.Ng}`` field) with ``extra`` more digits."""
    return re.sub(r"\{:\.(\d+)([fg])\}", lambda m: "{:." + str(int(m.group(1)) + extra) + m.group(2) + "}", fmt, count=1)


def distinct(values, fmt: str = "{:.3g}", apart=(1.0,), max_extra: int = 4) -> list[str]:
    """``values`` formatted with ``fmt``, each with as many more digits as it needs (up to ``max_extra``) so that it
    does not print the same as a number of ``apart`` (1: a ratio's bound against "no change") it differs from, nor
    as its neighbour in ``values`` that it differs from: ``[1.0046, 1.04]`` prints "1.005", "1.04", not "1", "1.04"."""
    vals = [float(v) for v in values]
    out = []
    for i, v in enumerate(vals):
        others = [a for a in apart if a != v] + [vals[j] for j in (i - 1, i + 1) if 0 <= j < len(vals) and vals[j] != v]
        s = fmt.format(v)
        for extra in range(max_extra + 1):
            f = _digits_fmt(fmt, extra)
            s = f.format(v)
            if all(s != f.format(o) for o in others):
                break
        out.append(s)
    return out


def interval(v: float, lo: float, hi: float, fmt: str = "{:.3g}", apart=(1.0,)) -> str:
    """``v [lo, hi]`` with enough digits that each bound prints apart from 1 and from the other bound
    (:func:`distinct`); ``v [n/a]`` without an interval, ``–`` without a value."""
    if v is None or pd.isna(v):
        return "–"
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return f"{fmt.format(v)} [n/a]"
    a, b = distinct([lo, hi], fmt, apart)
    return f"{fmt.format(v)} [{a}, {b}]"


# ---------------------------------------------------------------- reading

def _R():
    import render

    return render


def pairs(run: str) -> pd.DataFrame | None:
    """The run's paired table (``frontier_paired.csv``), or None for a run collected without it."""
    p = _R().RESULTS / run / "frontier_paired.csv"
    return pd.read_csv(p) if p.exists() else None


def with_deployable(fr: pd.DataFrame) -> pd.DataFrame:
    """``fr`` with its ``deployable`` column (computed from the line name where the run's table has none)."""
    if "deployable" in fr.columns:
        return fr.assign(deployable=fr["deployable"].astype(str).str.lower().eq("true"))
    return fr.assign(deployable=[deployable(l) for l in fr["line"]])


def near(run: str, share: float, tol: float = TOL, pattern: str | None = None, fr: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each line's point nearest ``share`` among those within ``tol`` (lines without one left out), with
    ``deployable``, best first by the ratio to dense; ``pattern``: only lines matching it."""
    fr = with_deployable(_R().frontier(run) if fr is None else fr)
    if pattern is not None:
        fr = fr[fr.line.str.match(pattern)]
    idx = []
    for _, g in fr.groupby("line"):
        d = np.abs(g.compute_share.to_numpy(float) - share)
        if d.min() <= tol + 1e-12:
            idx.append(g.index[int(np.argmin(d))])
    return fr.loc[idx].sort_values("ratio")


# ---------------------------------------------------------------- comparing two lines

_COL = {"log_ratio": "ratio", "kl": "kl", "top1": "top1"}


def compare(run: str, share: float, a, b, metric: str = "log_ratio") -> dict:
    """Line ``a`` against line ``b`` (rows of :func:`near`) at ``share``: ``{"verdict": better | worse | tie |
    n/a, "paired": bool, "text": the figures}``.  Paired where the run's paired table holds the pair at ``share``
    (the difference ``a - b`` with its interval; the log ratio printed as the ratio of the two perplexities);
    else the two unpaired intervals (better or worse only where they do not overlap)."""
    from apc.results.paired import verdict
    from apc.results.paired_table import lookup

    p = pairs(run)
    hit = None
    if p is not None and any(math.isclose(share, s) for s in p["share"].unique()):
        hit = lookup(p, share, a.line, b.line, metric)
    if hit is not None:
        d, lo, hi, tokens = hit
        v = verdict(d, lo, hi, metric)
        if metric == "log_ratio":
            text = f"perplexity ratio {interval(math.exp(d), math.exp(lo), math.exp(hi), '{:.3f}')}"
        else:
            text = f"{metric} difference {interval(d, lo, hi, '{:.3g}', apart=(0.0,))}"
        text += f", paired at equal compute {share:g}"
        tok = int(min(a.tokens, b.tokens))
        return {"verdict": v, "paired": True,
                "text": text + (f", on their {tokens:,} common tokens" if tokens < max(a.tokens, b.tokens) or tokens < tok else "")}
    c = _COL[metric]
    alo, ahi, blo, bhi = (float(getattr(r, c + s)) for r in (a, b) for s in ("_lo", "_hi"))
    if any(np.isnan([alo, ahi, blo, bhi])):
        v = "n/a"
    elif ahi < blo:
        v = "better" if metric != "top1" else "worse"
    elif bhi < alo:
        v = "worse" if metric != "top1" else "better"
    else:
        v = "tie"
    why = ": this run kept no paired table" if p is None else \
        f": not paired at {share:g} (a point off it by more than the paired table's tolerance)"
    return {"verdict": v, "paired": False,
            "text": ("no intervals" if v == "n/a" else "their unpaired intervals " + ("overlap" if v == "tie" else "are apart"))
                    + why}


def paired_ratio_cell(run: str, share: float, line: str, against: str) -> str:
    """``ppl(line) / ppl(against)`` at ``share`` with its paired interval (from the run's paired table), "n/a" where
    the pair is not in it; GRIFFIN's against a line on every token is on their common tokens, and says so."""
    from apc.results.paired_table import lookup

    p = pairs(run)
    hit = None if p is None else lookup(p, share, line, against)
    if hit is None:
        return "n/a"
    d, lo, hi, tokens = hit
    common = p.loc[(p.line == line) | (p.against == line), "tokens"].max() > tokens or \
        p.loc[(p.line == against) | (p.against == against), "tokens"].max() > tokens
    return interval(math.exp(d), math.exp(lo), math.exp(hi), "{:.3f}×") + (f" on {tokens:,} common tokens" if common else "")


def _sort(n: pd.DataFrame, metric: str) -> pd.DataFrame:
    return n.sort_values(_COL[metric], ascending=metric != "top1")


def best_of(run: str, share: float, pattern: str | None = None, metric: str = "log_ratio", tol: float = TOL) -> dict | None:
    """The verdict among the deployable lines (matching ``pattern``) at ``share``: ``{"best": row, "runner_up": row
    or None, "cmp": :func:`compare` of the two, "tie": bool, "bound": the best upper-bound row (matching
    ``pattern``) when it beats the best deployable line's figure, else None}``; None without a deployable line."""
    n = _sort(near(run, share, tol, pattern), metric)
    dep, ub = n[n.deployable], n[~n.deployable]
    if dep.empty:
        return None
    best = dep.iloc[0]
    ru = dep.iloc[1] if len(dep) > 1 else None
    cmp = compare(run, share, best, ru, metric) if ru is not None else None
    c = _COL[metric]
    bound = None
    if len(ub):
        u = ub.iloc[0]
        if (u[c] < best[c]) == (metric != "top1"):
            bound = u
    return {"best": best, "runner_up": ru, "cmp": cmp, "tie": cmp is not None and cmp["verdict"] != "better",
            "bound": bound}


def claim(v: dict, label: str = "line", metric: str = "log_ratio") -> str:
    """The words of a :func:`best_of` verdict: "`X` is the best deployable {label} (...)" or "`X` and `Y` tie as the
    best deployable {label} (...)", and the upper bound, labelled as one, where it does better."""
    c = _COL[metric]
    fmt = "{:.2f}×" if c == "ratio" else "{:.3g}"
    what = "dense perplexity" if c == "ratio" else ("nats KL" if c == "kl" else "top-1 agreement")
    b, r = v["best"], v["runner_up"]
    fig = lambda row: f"{interval(row[c], row[c + '_lo'], row[c + '_hi'], fmt)} at {row.compute_share:.2f}"
    if r is None:
        out = f"`{b.line}` is the only deployable {label} ({fig(b)} {what})"
    elif v["tie"]:
        out = f"`{b.line}` and `{r.line}` tie as the best deployable {label} ({fig(b)} and {fig(r)} {what}; {v['cmp']['text']})"
    else:
        out = f"`{b.line}` is the best deployable {label} ({fig(b)} {what}; against `{r.line}`, {v['cmp']['text']})"
    if v["bound"] is not None:
        u = v["bound"]
        out += f"; the upper bound `{u.line}` (oracle, not deployable) is at {fig(u)} {what}"
    return out


# ---------------------------------------------------------------- sentences

def best_sentence(run: str, share: float = 0.6, tol: float = TOL) -> str:
    """The verdict at ``share`` among the deployable lines (points within ``tol``), in one sentence."""
    v = best_of(run, share, tol=tol)
    return f"At compute {share:g} (points within {tol:g}): {claim(v)}.\n" if v else ""


def first_reach(run: str, level: float = 1.05) -> str:
    """Which deployable line reaches ``level``× dense perplexity at the lowest compute share, or which tie for it
    (the crossing shares of their intervals overlap)."""
    cross = _R()._crossings(_R().frontier(run))
    c = f"share_{level:g}"
    got = cross[cross[c].notna().to_numpy() & np.array([deployable(l) for l in cross.index], bool)].sort_values(c)
    if got.empty:
        return f"no deployable line reaches {level:g}× dense within its points"
    fig = lambda l: f"`{l}` at {interval(got.loc[l, c], got.loc[l, c + '_lo'], got.loc[l, c + '_hi'], '{:.2f}', apart=())}"
    a = got.index[0]
    ties = [l for l in got.index[1:] if not (got.loc[l, c + "_lo"] > got.loc[a, c + "_hi"])]
    if not ties:
        return f"the first deployable line to reach {level:g}× dense is {fig(a)}"
    return (f"{' and '.join(fig(l) for l in [a] + ties)} reach {level:g}× dense with overlapping intervals: "
            f"none is first")


def _pred_neuron_pairs(fr: pd.DataFrame) -> list[tuple[str, str]]:
    """(top-1 predicted cluster line, neuron predictor of equal FLOPs) pairs of a frontier table."""
    out = []
    for l in fr.line.unique():
        m = re.match(r"^predicted-(\w+)-m1\..*-k(\d+)-s\d+$", l)
        if m and f"neuron-{m.group(1)}-k{m.group(2)}-x1" in set(fr.line):
            out.append((l, f"neuron-{m.group(1)}-k{m.group(2)}-x1"))
    return out


def cluster_vs_neuron_verdict(run: str, share: float = 0.6, pred: str | None = None) -> str:
    """The best (or the named) top-1 predicted cluster line at ``share`` against the neuron predictor of equal FLOPs."""
    n = near(run, share)
    cands = [(p, q) for p, q in _pred_neuron_pairs(n) if pred is None or p == pred]
    if not cands:
        return ""
    order = list(n.line)
    p, q = min(cands, key=lambda pq: order.index(pq[0]))
    a, b = n[n.line == p].iloc[0], n[n.line == q].iloc[0]
    v = compare(run, share, a, b)
    verb = {"better": "beats", "worse": "loses to", "tie": "ties with", "n/a": "is not compared with"}[v["verdict"]]
    fig = lambda r: f"{_R().ppl(r.ppl)}, {interval(r.ratio, r.ratio_lo, r.ratio_hi, '{:.2f}×')} dense at {r.compute_share:.2f}"
    return (f"the top-1 predicted cluster line `{p}` ({fig(a)}) {verb} the neuron predictor of equal FLOPs `{q}` "
            f"({fig(b)}; {v['text']})")


def reversal_sentence(run: str, other: str, share: float = 0.6) -> str:
    """Each (predicted cluster line, neuron predictor of equal FLOPs) pair that both runs scored at ``share``,
    where the order of their perplexities differs between the runs: stated as a reversal, with both runs'
    figures; "" where no finding reverses."""
    na, nb = near(run, share), near(other, share)
    out = []
    for p, q in _pred_neuron_pairs(na):
        if p not in set(nb.line) or q not in set(nb.line):
            continue
        ra = [na[na.line == l].iloc[0] for l in (p, q)]
        rb = [nb[nb.line == l].iloc[0] for l in (p, q)]
        if (ra[0].ratio < ra[1].ratio) == (rb[0].ratio < rb[1].ratio):
            continue
        va, vb = compare(run, share, *ra), compare(other, share, *rb)
        word = {"better": "beats", "worse": "loses to", "tie": "ties with", "n/a": "is not compared with"}
        fig = lambda r: interval(r.ratio, r.ratio_lo, r.ratio_hi, "{:.2f}×")
        out.append(f"on `{run}` `{p}` {word[va['verdict']]} `{q}` ({fig(ra[0])} against {fig(ra[1])} dense; {va['text']}), "
                   f"on `{other}` it {word[vb['verdict']]} it ({fig(rb[0])} against {fig(rb[1])}; {vb['text']})")
    if not out:
        return ""
    return (f"**A finding that reverses between the runs** (at compute {share:g}, points within {TOL:g}; the lower "
            "perplexity is the other line's on the other run): " + "; ".join(out) + ".\n")


def family_claims(run: str, share: float = 0.6) -> str:
    """Where the token-cluster and experts lines stand at ``share``: the best deployable line of each (or the tie),
    against the best deployable line of all, with the upper bound of each family labelled as one."""
    top = best_of(run, share)
    if top is None:
        return ""
    ref = top["best"]
    out = []
    for label, pat in (("token-cluster line", r"^(oracle|predicted)[-.].*apc"), ("experts line", r"^experts-")):
        v = best_of(run, share, pat)
        if v is None:
            continue
        b = v["best"]
        out.append(f"At {share:g} {claim(v, label)}: {b.ratio / ref.ratio:.1f}× the perplexity ratio and "
                   f"{b.kl / ref.kl:.1f}× the KL of `{ref.line}`.")
    return " ".join(out)


def nearest_within(fr: pd.DataFrame, line: str, share: float, tol: float = TOL):
    """A line's point nearest ``share`` if within ``tol``, else None (then the line has no point there)."""
    g = fr[fr.line == line]
    if g.empty:
        return None
    d = np.abs(g.compute_share.to_numpy(float) - share)
    i = int(np.argmin(d))
    return g.iloc[i] if d[i] <= tol + 1e-12 else None


# ---------------------------------------------------------------- the decision table's paired columns

def decision_table(run: str, share: float = 0.8) -> str:
    """Every line the run's ``frontier_decision.csv`` places at compute ``share``, against the best deployable line
    there: the ratio of their perplexities, the KL difference and the top-1 difference (this line minus the best,
    paired 95 % intervals at equal compute) and the verdict; upper bounds labelled."""
    dec = _R().table(run, "frontier_decision.csv")
    s = f"{share:g}"
    g = dec[dec[f"verdict_{s}"].fillna("n/a") != "n/a"].sort_values(f"d_log_ratio_{s}")
    best = g[f"best_{s}"].dropna().iloc[0]
    rows = []
    for _, d in g.iterrows():
        col = lambda m: [d[f"d_{m}_{s}"], d[f"d_{m}_{s}_lo"], d[f"d_{m}_{s}_hi"]]
        me = d["line"] == best
        rows.append([f"`{d['line']}`" + ("" if deployable(d["line"]) else " (upper bound)"),
                     "–" if me else paired_ratio_cell(run, share, d["line"], best),
                     "–" if me else interval(*col("kl"), "{:.3g}", apart=(0.0,)),
                     "–" if me else interval(*col("top1"), "{:.3f}", apart=(0.0,)), d[f"verdict_{s}"]])
    return _R().md(["line", f"perplexity ÷ `{best}`", f"KL − `{best}`, nats", f"top-1 − `{best}`", "verdict"], rows)


def paired_verdicts(run: str, shares=PAIRED_SHARES) -> str:
    """The verdict at each compute share among the deployable lines of a run with a paired table, in one sentence."""
    parts = []
    for s in shares:
        v = best_of(run, s)
        if v is not None:
            parts.append(f"at {s:g} {claim(v)}")
    return "; ".join(parts)


def run_gap(run: str, other: str) -> float:
    """The largest relative difference of the perplexity of a frontier point between two runs of the same points."""
    a, b = _R().frontier(run), _R().frontier(other)
    m = a.merge(b, on=["pset", "line", "share"], suffixes=("", "_o"))
    return float((m.ppl / m.ppl_o - 1).abs().max())
