"""Markdown tables and sentences of the docs, rendered from the committed raw outputs in docs/results/.

The cog blocks of README.md and docs/*.md import this module (`make docs` runs `cog -r` over them; the test
suite runs `cog --check`). Every function takes a run name (a folder of docs/results/) and returns Markdown.

    python docs/render.py plots      # redraw the embedded plots from the committed CSVs and JSONs
"""

from __future__ import annotations

import json
import re
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

DOCS = Path(__file__).resolve().parent
RESULTS = DOCS / "results"
sys.path.insert(0, str(DOCS.parent / "src"))
sys.path.insert(0, str(DOCS))

import render_verdicts as V  # noqa: E402  the verdicts: deployable lines, paired intervals, ties
from apc.results.frontier_lines import frontier_shares  # noqa: E402


# ---------------------------------------------------------------- reading

def path(run: str, rel: str = "") -> Path:
    p = RESULTS / run / rel
    if not p.exists():
        raise FileNotFoundError(f"docs/results/{run}/{rel} is missing: collect the run first (docs/collect_run.py)")
    return p


@lru_cache(maxsize=None)
def js(run: str, rel: str) -> dict:
    return json.loads(path(run, rel).read_text())


@lru_cache(maxsize=None)
def table(run: str, rel: str) -> pd.DataFrame:
    return pd.read_csv(path(run, rel), comment="#")


def command(run: str) -> dict:
    """The `key: value` lines of a run's COMMAND file (command, commit, ...)."""
    out = {}
    for line in path(run, "COMMAND").read_text().splitlines():
        k, _, v = line.partition(":")
        out[k.strip()] = v.strip()
    return out


def commit(run: str) -> str:
    return command(run).get("commit", "unknown")[:7]


# ---------------------------------------------------------------- formatting

def ppl(x: float) -> str:
    if pd.isna(x):
        return "–"
    return f"{x:.2f}" if x < 100 else f"{x:.1f}" if x < 1000 else f"{x:.3g}"


def ci(d) -> str:
    g = d.get if isinstance(d, dict) else d.__getitem__
    return f"{ppl(g('ppl'))} [{ppl(g('ppl_lo'))}, {ppl(g('ppl_hi'))}]"


def x(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}g}×"


def md(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def ratio(m: dict, ref: dict) -> tuple[float, float, float]:
    """Paired block-bootstrap ratio of two perplexity results on the tokens both scored; the bounds are
    NaN (n/a) below 20 blocks or for a result without per-token NLLs (one written before they were kept)."""
    from apc.perplexity.intervals import BLOCK_TOKENS, ppl_of, ppl_ratio

    if "token_nll" in m and "token_nll" in ref:
        n = min(len(m["token_nll"]), len(ref["token_nll"]))
        return ppl_ratio(m["token_nll"][:n], ref["token_nll"][:n], block=int(m.get("block_tokens", BLOCK_TOKENS)))
    n = min(len(m["window_nll_sum"]), len(ref["window_nll_sum"]))
    r = ppl_of(m["window_nll_sum"][:n], m["window_tokens"][:n]) / ppl_of(ref["window_nll_sum"][:n], ref["window_tokens"][:n])
    return r, float("nan"), float("nan")


def ratio_ci(m: dict, ref: dict, digits: int = 3) -> str:
    r, lo, hi = ratio(m, ref)
    return V.interval(r, lo, hi, f"{{:.{digits}g}}").replace(" [", "× [", 1)  # bounds printed apart from 1


# ---------------------------------------------------------------- the default run: references and clustering

def dense(run: str) -> dict:
    return js(run, "ppl/dense.json")


def sparse(run: str, pset: str) -> dict:
    return js(run, f"ppl/sparse-{pset}.json")


def tokens_windows(d: dict) -> str:
    return f"{d['tokens']:,} tokens in {d['windows']} windows"


def gate_table(run: str, projection: str = "gate") -> str:
    """Held-out recall / precision / centroid density per scope, method and K (train − test recall gap)."""
    s = table(run, "summary.csv")
    g = s[s.projection == projection]
    rows, ks = [], sorted({int(k) for k in g.k.unique()})
    for (scope, method), grp in g.groupby(["scope", "method"], sort=False):
        cells = {}
        for k, gk in grp.groupby("k"):
            te = gk[gk.split == "test"].iloc[0]
            tr = gk[gk.split == "train"]
            gap = "" if method == "random" or tr.empty else f" ({tr.iloc[0].recall - te.recall:+.3f})"
            cells[int(k)] = f"{te.recall:.3f} / {te.precision:.3f} / {te.centroid_density:.2f}{gap}"
        rows.append([f"{scope.replace('_', '-')} {method}"] + [cells.get(k, "") for k in ks])
    return md(["scope, method"] + [f"K = {k}" for k in ks], rows)


def _cells(run: str, pset: str) -> list[dict]:
    base = RESULTS / run / "ppl" / pset
    return [json.loads(p.read_text()) for p in sorted(base.glob("*/*.json"))]


def _coverage(run: str, d: dict) -> tuple[float, float]:
    s = table(run, "summary.csv")
    rows = s[(s.split == "test") & (s.scope == d["scope"]) & (s.method == d["method"]) & (s.k == d["k"])
             & (s.density == d["density"]) & (s.projection.isin(d["projections"]))]
    mass = rows.mass_recall.mean() if "mass_recall" in rows else float("nan")
    return float(rows.recall.mean()), float(mass)


def ppl_table(run: str, pset: str) -> str:
    """Per perplexity cell of a projection set: test coverage, and each mode's PPL and ratio to true sparse."""
    sp = sparse(run, pset)
    modes = sorted({m for d in _cells(run, pset) for m in d["modes"]})
    rows = []
    for d in _cells(run, pset):
        rec, mass = _coverage(run, d)
        cov = f"{rec:.3f}" + ("" if np.isnan(mass) else f" / {mass:.3f}")
        row = [f"{d['scope'].replace('_', '-')} {d['method']} K = {d['k']}", cov]
        for mode in modes:
            m = d["modes"].get(mode)
            row.append("–" if m is None else f"{ci(m)}; {ratio_ci(m, sp)} (kept {np.mean(list(m['kept'].values())):.2f})")
        rows.append(row)
    return md(["cell", "test recall" + (" / mass_recall" if pset == "down_in" else "")]
              + [f"`{m}`: PPL [95 %]; ratio to true sparse (kept)" for m in modes], rows)


def references(run: str) -> str:
    """One sentence: dense and the true-sparse masks of every set, with their intervals."""
    d = dense(run)
    parts = [f"Dense is **{ci(d)}** ({tokens_windows(d)})"]
    for p in sorted((RESULTS / run / "ppl").glob("sparse-*.json")):
        pset = p.stem[len("sparse-"):]
        sp = json.loads(p.read_text())
        parts.append(f"true sparse on `{pset}` {ci(sp)} ({ratio_ci(sp, d)} dense, kept "
                     f"{np.mean(list(sp['kept'].values())):.3f})")
    return "; ".join(parts) + ".\n"


def config(run: str) -> dict:
    return js(run, "config.json")


def budget_sentence(run: str) -> str:
    """The run's token budgets, from its resolved config and the extraction sidecars."""
    c = config(run)
    tr, te = js(run, "extract/train.json"), js(run, "extract/test.json")
    d = dense(run)
    return (f"{tr['n_windows']} train windows ({int(tr['n_tokens']):,} text tokens) and {te['n_windows']} test windows "
            f"({int(te['n_tokens']):,} tokens) of {c['data']['seq_len']} tokens; perplexity cells on the first "
            f"{tokens_windows(d)}; clustering on {n(c['cluster']['max_patterns_per_layer'])} train patterns per layer, "
            f"at most {c['cluster']['max_iter']} iterations; train-split metrics on a seeded sample of "
            f"{n(c['eval'].get('max_train_tokens'))} tokens per layer, test metrics on the whole stored test split.\n")


def extraction_sentence(run: str) -> str:
    t = js(run, "thresholds.json")
    target = float(t["sparsity"])
    errs = [abs(layer["achieved_sparsity"] - target) for per in t["projections"].values() for layer in per]
    te = js(run, "extract/test.json")
    dens = [v for per in te["density"].values() for v in per]
    tr = js(run, "extract/train.json")
    return (f"Train thresholds hit the {target:.0%} sparsity target within {max(errs):.1e} for all {len(errs)} "
            f"(layer, projection) pairs; held-out per-layer densities range from {min(dens):.3f} to {max(dens):.3f}. "
            f"The train pattern store takes {int(tr['store_bytes']) / 1e6:.1f} MB against an n·d/8 ideal of "
            f"{int(tr['ideal_bytes']) / 1e6:.1f} MB; the `down_in` magnitude store {int(tr['magnitude_bytes']) / 1e6:.0f} MB "
            f"(train) and {int(te['magnitude_bytes']) / 1e6:.0f} MB (test), one byte per value; stores on disk "
            f"(`du.tsv`): {store_sizes(run)}.\n")


def lift_sentence(run: str, projection: str = "gate") -> str:
    """APC's held-out recall over the same-density random control, per scope."""
    s = table(run, "summary.csv")
    s = s[(s.projection == projection) & (s.split == "test")]
    parts = []
    for scope, g in s.groupby("scope", sort=False):
        apc = g[g.method == "apc"].set_index("k").recall
        rnd = g[g.method == "random"].set_index("k").recall
        lift = (apc - rnd).dropna()
        if len(lift):
            parts.append(f"{lift.min():.2f}–{lift.max():.2f} {scope.replace('_', '-')}")
    pl = s[(s.scope == "per_layer") & (s.method == "apc")].set_index("k").recall
    po = s[(s.scope == "pooled") & (s.method == "apc")].set_index("k").recall
    both = (pl - po).dropna()
    out = f"At equal density APC beats the random control by {' and '.join(parts)} in test recall"
    if len(both):
        out += (f"; per-layer centroids {'beat' if (both > 0).all() else 'do not always beat'} the paper's pooled "
                f"ones at every K ({both.min():+.3f} to {both.max():+.3f})")
    return out + ".\n"


def paper_headline(run: str, pset: str = "paper", mode: str = "centroid_only") -> str:
    """The best cell of a projection set in one mode, as a ratio to true sparse, and dense beside it."""
    sp, d = sparse(run, pset), dense(run)
    best = None
    for c in _cells(run, pset):
        m = c["modes"].get(mode)
        if m is not None and (best is None or m["ppl"] < best[1]["ppl"]):
            best = (c, m)
    if best is None:
        return ""
    c, m = best
    return (f"Under the paper's protocol (centroid masks on {', '.join(c['projections'])} in every layer) the best "
            f"cell, {c['scope'].replace('_', '-')} {c['method']} K = {c['k']}, scores {ci(m)} `{mode}`: "
            f"{ratio_ci(m, sp)} the true sparse masks ({ppl(sp['ppl'])}; dense {ppl(d['ppl'])}).\n")


# ---------------------------------------------------------------- frontier

def frontier(run: str) -> pd.DataFrame:
    name = "frontier.csv" if (RESULTS / run / "frontier.csv").exists() else f"frontier_{run.split('-')[-1]}.csv"
    return table(run, name)


def _crossings(fr: pd.DataFrame) -> pd.DataFrame:
    from apc.results.frontier import crossings

    return crossings(fr).set_index("line")


def _cross(row, r: float) -> str:
    v, lo, hi = row[f"share_{r:g}"], row[f"share_{r:g}_lo"], row[f"share_{r:g}_hi"]
    if pd.isna(v):
        return "not reached" + (f" (interval from {lo:.2f})" if not pd.isna(lo) else "")
    return f"{v:.2f} [{lo:.2f}, " + ("not reached" if pd.isna(hi) else f"{hi:.2f}") + "]"


def frontier_table(run: str) -> str:
    """Every line: PPL [95 %] @ compute share (kept share) per point, and the decision table's shares: where it
    reaches 1.05× / 1.25× dense perplexity and, where the run has KL, a mean KL of 0.05 / 0.2 nats."""
    fr = frontier(run)
    n = max(len(g) for _, g in fr.groupby("line"))
    cross = _crossings(fr)
    rows = []
    for line, g in fr.groupby("line", sort=False):
        g = g.sort_values("compute_share")
        cells = [f"{ci(r._asdict())} @ {r.compute_share:.2f} ({r.kept_share:.2f})" for r in g.itertuples()]
        c = cross.loc[line]
        kl = [_cross_kl(c, v) for v in (0.05, 0.2)] if "kl" in fr else []
        rows.append([line] + cells + [""] * (n - len(cells)) + [_cross(c, 1.05), _cross(c, 1.25)] + kl)
    return md(["line"] + [f"point {i + 1}" for i in range(n)] + ["1.05× dense at", "1.25× dense at"]
              + (["KL 0.05 at", "KL 0.2 at"] if "kl" in fr else []), rows)


def _cross_kl(row, v: float) -> str:
    c = f"share_kl{v:g}"
    val, lo, hi = row[c], row[c + "_lo"], row[c + "_hi"]
    if pd.isna(val):
        return "not reached"
    return f"{val:.2f} [{lo:.2f}, " + ("not reached" if pd.isna(hi) else f"{hi:.2f}") + "]" if not pd.isna(lo) else f"{val:.2f}"


def batch_table(run: str) -> str:
    """The batch view at the middle kept share: rows read by B tokens (union / grouped by cluster id); n/a where a
    line's view needs more windows than the run scores (GRIFFIN's is over B sequences)."""
    fr = frontier(run)
    sizes = sorted(int(c[len("union_b"):]) for c in fr.columns if c.startswith("union_b"))
    mid = batch_share(run)
    rows = []
    for line, g in fr.groupby("line", sort=False):
        r = g.iloc[int(np.argmin(np.abs(g.share.to_numpy(float) - mid)))]
        cells = [("n/a" if pd.isna(r[f"union_b{b}"]) else f"{r[f'union_b{b}']:.3f}")
                 + ("" if pd.isna(r.get(f"grouped_b{b}")) else f" / {r[f'grouped_b{b}']:.3f}") for b in sizes]
        rows.append([line, f"{r.kept_share:.2f}"] + cells)
    return md(["line", "kept"] + [f"B = {b}" for b in sizes], rows)


def batch_share(run: str) -> float:
    shares = frontier_shares(frontier(run))
    return float(shares[len(shares) // 2])


def near(run: str, share: float, tol: float = 0.05) -> pd.DataFrame:
    """Each line's point nearest to a compute share (lines with no point within `tol` left out), best first by
    the ratio to dense on its own tokens (a GRIFFIN point scores only the tokens after its prompt)."""
    fr = frontier(run)
    idx = []
    for _, g in fr.groupby("line"):
        d = np.abs(g.compute_share.to_numpy(float) - share)
        if d.min() <= tol:
            idx.append(g.index[int(np.argmin(d))])
    return fr.loc[idx].sort_values("ratio")


def iv(v: float, lo: float, hi: float, fmt: str = "{:.3g}") -> str:
    """`v [lo, hi]`, or `v [n/a]` where the run has too few blocks for an interval; `–` where v is missing."""
    return V.interval(v, lo, hi, fmt)


def verdict_table(run: str, share: float = 0.6) -> str:
    """The short verdict: every frontier line at the compute share nearest `share`, best first, with its token
    count, perplexity, ratio to dense, KL from dense and top-1 agreement (95 % block-bootstrap intervals)."""
    rows = []
    n = V.near(run, share)
    top = V.best_of(run, share)
    paired = V.pairs(run) is not None and top is not None
    for r in n.itertuples():
        d = r._asdict()
        row = [f"`{r.line}`" + ("" if r.deployable else " (upper bound)"), f"{r.compute_share:.2f}", f"{int(r.tokens):,}",
               ci(d), iv(r.ratio, r.ratio_lo, r.ratio_hi, "{:.2f}×")]
        if "kl" in d:
            row += [iv(r.kl, r.kl_lo, r.kl_hi), iv(r.top1, r.top1_lo, r.top1_hi, "{:.3f}")]
        if paired:
            row.append("–" if r.line == top["best"].line else V.paired_ratio_cell(run, share, r.line, top["best"].line))
        rows.append(row)
    head = ["line", "compute share", "tokens", "perplexity [95 %]", "ratio to dense [95 %]"]
    if "kl" in frontier(run).columns:
        head += ["KL from dense, nats [95 %]", "top-1 agreement [95 %]"]
    if paired:
        head.append(f"÷ `{top['best'].line}`, paired [95 %]")
    return md(head, rows)


def verdict_sentence(run: str, share: float = 0.6) -> str:
    """Which deployable line is best at `share` (or which tie), which reaches 1.05× dense first (or which tie), and
    the best top-1 predicted cluster line against the neuron predictor of equal FLOPs (:mod:`render_verdicts`)."""
    v = V.best_of(run, share)
    out = f"At compute {share:g} (points within {V.TOL:g}) {V.claim(v)}; {V.first_reach(run)}"
    cn = V.cluster_vs_neuron_verdict(run, share)
    return out + (f". At {share:g} {cn}" if cn else "") + ".\n"


def best_per_share(run: str, shares=(0.4, 0.6, 0.8)) -> str:
    """The best and the next deployable line at each compute share (points within the verdicts' tolerance), and
    whether the first is best or the two tie (:func:`render_verdicts.best_of`)."""
    rows = []
    for s in shares:
        v = V.best_of(run, s)
        a, b = v["best"], v["runner_up"]
        rows.append([f"≈ {s:g}", f"`{a.line}` @ {a.compute_share:.2f}: {ci(a)}, {a.ratio:.2f}× dense",
                     "–" if b is None else f"`{b.line}` @ {b.compute_share:.2f}: {ci(b)}, {b.ratio:.2f}× dense",
                     "–" if b is None else ("tie" if v["tie"] else "first is best") + f" ({v['cmp']['text']})"])
    return md(["compute share", "best deployable line", "next", "verdict"], rows)


def time_range(run: str, column: str, families=None) -> str:
    fr = frontier(run)
    if column not in fr:
        return "–"
    v = fr[fr.family.isin(families)] if families else fr
    v = v[column].dropna()
    return f"{v.min():.2f}–{v.max():.2f}"


def _at(fr: pd.DataFrame, line: str, share: float):
    g = fr[fr.line == line]
    if g.empty:
        return None
    return g.iloc[int(np.argmin(np.abs(g.share.to_numpy(float) - share)))]


def cluster_vs_neuron(run: str, share: float = 0.6) -> str:
    """Per K of the per-layer APC cells: oracle, predicted (linear top-1) and the neuron predictor of equal FLOPs."""
    fr = frontier(run)
    ks = sorted({int(m) for m in fr.line.str.extract(r"^oracle\.per_layer\.apc-k(\d+)-s0$")[0].dropna()})
    rows = []
    for k in ks:
        o = _at(fr, f"oracle.per_layer.apc-k{k}-s0", share)
        p = _at(fr, f"predicted-linear-m1.per_layer.apc-k{k}-s0", share)
        nn = _at(fr, f"neuron-linear-k{k}-x1", share)
        cell = lambda r: "–" if r is None else f"{ppl(r.ppl)} @ {r.compute_share:.2f}"
        better = "–" if p is None or nn is None else ("cluster" if p.ppl < nn.ppl else "neuron")
        rows.append([f"K = {k}", cell(o), cell(p), cell(nn), better])
    return md(["cell", "oracle", "predicted cluster", "neuron predictor", "lower perplexity"], rows)


def allocation_table(run: str, share: float, allocations: dict) -> str:
    """Uniform against the other allocations at the same mean, for each line that has them: the cross-layer
    `layer-greedy` of the cluster cells, and the lines of `allocations` (``{uniform line: {"layer-greedy": line,
    "block": line}}``, e.g. TEAL's); PPL and ratio to dense."""
    fr = frontier(run)
    have = set(fr.line)
    rows = []
    for a in [l for l in fr.line.unique() if l.startswith("oracle.") and "_layer_greedy" not in l] + list(allocations):
        alts = dict(allocations[a]) if a in allocations else {"layer-greedy": a.replace("-k", "_layer_greedy-k"),
                                                              "block": None}
        if not any(b in have for b in alts.values()):
            continue
        cells = [f"`{a}`"]
        for b in (a, alts["layer-greedy"], alts["block"]):
            r = _at(fr, b, share) if b in have else None
            cells.append("–" if r is None else f"{ppl(r.ppl)} ({iv(r.ratio, r.ratio_lo, r.ratio_hi, '{:.2f}×')})")
        rows.append(cells)
    return md(["line", "uniform: PPL (× dense [95 %])", "layer-greedy", "block (TEAL's own)"], rows)


def predictor_table(run: str) -> str:
    """Test-split reports of the cluster-id and neuron predictors: accuracy, mask recall (the oracle's), precision."""
    rows = []
    for p in sorted((RESULTS / run / "predictors").glob("*.json")):
        d = json.loads(p.read_text())
        tot = d["total"]
        if "cell" in d:
            for m in tot["masks"]:
                rows.append([f"cluster `{d['kind']}` top-{m['top_m']}, {d['cell']}", f"{m['centroid_density']:.2f}",
                             f"{m['accuracy']:.3f}", f"{m['recall']:.3f} ({tot['oracle']['recall']:.3f})",
                             f"{m['precision']:.3f}", f"{tot['params']:,}", f"{tot['flops_share']:.4f}"])
        else:
            for m in tot["masks"]:
                rows.append([f"neuron rank {d['rank']} (×{d['factor']}, matched to `{d['matched']['kind']}` K = "
                             f"{d['matched']['k']})", f"{m['centroid_density']:.2f}", "–", f"{m['recall']:.3f}",
                             f"{m['precision']:.3f}", f"{tot['params']:,}", f"{tot['flops_share']:.4f}"])
    return md(["predictor", "mask density", "top-m accuracy", "recall (oracle)", "precision", "params",
               "FLOPs share of the FFN"], rows)


# ---------------------------------------------------------------- budget

def jobs(run: str) -> pd.DataFrame:
    return table(run, "jobs.csv")


def budget_table(run: str) -> str:
    """Job time per rule from the run's Snakemake benchmark files."""
    j = jobs(run)
    g = j.groupby("rule").agg(jobs=("s", "size"), s=("s", "sum"), rss=("max_rss_mb", "max")).sort_values("s", ascending=False)
    rows = [[r, int(v.jobs), f"{v.s:.0f}", "–" if pd.isna(v.rss) else f"{v.rss:.0f}"] for r, v in g.iterrows()]
    rows.append(["all", int(g.jobs.sum()), f"{g.s.sum():.0f}", ""])
    return md(["rule", "jobs", "job-seconds", "max peak RSS (MB)"], rows)


def dag(run: str) -> str:
    """Jobs, DAG wall time and job-seconds of a collected run, and its note (how it was made) if any."""
    note = command(run).get("note")
    d = js(run, "dag.json")
    m, s = divmod(int(round(d["wall_s"])), 60)
    j = jobs(run)
    return (f"{d.get('jobs_done', len(j))} jobs in {m} min {s:02d} s of DAG wall time, "
            f"{j.s.sum():.0f} job-seconds" + (f"; {note}" if note else ""))


def store_sizes(run: str) -> str:
    """Store sizes of the extraction, from the `du.tsv` of the run."""
    du = pd.read_csv(path(run, "du.tsv"), sep="\t").set_index("path")["bytes"]
    parts = []
    for key, label in (("patterns/train", "train patterns"), ("patterns/test", "test patterns"),
                       ("ffn_inputs/train", "train FFN inputs"), ("ffn_inputs/test", "test FFN inputs")):
        if key in du.index:
            parts.append(f"{label} {du[key] / 1e6:.1f} MB")
    return ", ".join(parts)


def thresholds_sentence(run: str) -> str:
    t = js(run, "thresholds.json")
    target = t.get("sparsity", t.get("target_sparsity"))
    errs = []
    for proj, per in t["projections"].items() if "projections" in t else []:
        for layer in per:
            errs.append(abs(layer["achieved_sparsity"] - target))
    return f"{len(errs)} (layer, projection) pairs within {max(errs):.1e} of the target {target:g}" if errs else ""


# ---------------------------------------------------------------- dry runs and plans

def job_counts(preset: str) -> pd.DataFrame:
    return pd.read_csv(path("plans", f"jobs-{preset}.tsv"), sep="\t")


def job_total(preset: str) -> int:
    j = job_counts(preset)
    return int(j.loc[j.job == "total", "count"].iloc[0])


def job_counts_table(presets=("default", "smoke", "mistral7b-wikitext2")) -> str:
    tabs = {p: job_counts(p).set_index("job")["count"] for p in presets}
    rules = [r for r in dict.fromkeys(r for p in presets for r in tabs[p].index) if r != "total"] + ["total"]
    rows = [[f"`{r}`" if r != "total" else "**total**"] + [int(tabs[p].get(r, 0)) or "–" for p in presets] for r in rules]
    return md(["rule"] + [f"`{p}`" for p in presets], rows)


def text(run: str, rel: str, grep: str | None = None, drop: str | None = None) -> str:
    """A raw text file (or its lines matching `grep`, without those matching `drop`) as a fenced block."""
    lines = path(run, rel).read_text().splitlines()
    if grep:
        lines = [ln for ln in lines if re.search(grep, ln)]
    if drop:
        lines = [ln for ln in lines if not re.search(drop, ln)]
    return "```text\n" + "\n".join(lines) + "\n```\n"


def plan_total(run: str, rel: str) -> str:
    m = re.search(r"total\s+([\d.]+)", path(run, rel).read_text())
    return m.group(1) if m else "–"


# ---------------------------------------------------------------- kernels

def ffn_masks(run: str = "kernels-h200") -> pd.DataFrame:
    name = next(p.name for p in sorted(path(run).glob("ffn_masks_*.csv")))
    return table(run, name)


def _fm(run: str, kernel: str, tokens: int, share: float, groups: int | None = None, assign="-") -> float:
    d = ffn_masks(run)
    q = (d["kernel"] == kernel) & (d["tokens"] == tokens) & np.isclose(d["kept_share"], share) & (d["assign"] == assign)
    if groups is not None:
        q &= d["groups"] == groups
    return float(d[q]["ratio"].iloc[0]) if q.any() else float("nan")


def ffn_mask_table(run: str, gate_kernel: str, shares=(0.4, 0.6, 0.8)) -> str:
    """Masked FFN time over dense time, per regime and kept share (`gate_kernel`: the kernel of a mask decided by
    the gate, CATS's)."""
    regimes = [("decode, T = 1: one cluster mask (`grouped`)", "grouped", 1, 8, "uniform"),
               ("decode, T = 1: per-token mask (neuron predictor)", "per_token", 1, None, "-"),
               (f"decode, T = 1: `{gate_kernel}`", gate_kernel, 1, None, "-"),
               ("prefill, T = 4096: grouped, K = 8 (uniform ids)", "grouped", 4096, 8, "uniform"),
               ("prefill, T = 4096: grouped, K = 32", "grouped", 4096, 32, "uniform"),
               ("prefill, T = 16384: grouped, K = 8", "grouped", 16384, 8, "uniform")]
    rows = [[name] + [f"{_fm(run, k, t, s, g, a):.2f}" for s in shares] for name, k, t, g, a in regimes]
    rows.append([f"prefill, T = 4096: per-token / `{gate_kernel}`"]
                + [f"{_fm(run, 'per_token', 4096, s):.2f} / {_fm(run, gate_kernel, 4096, s):.2f}" for s in shares])
    return md(["regime"] + [f"ρ = {s:g}" for s in shares], rows)


def dense_ms(run: str, tokens: int) -> str:
    d = ffn_masks(run)
    return f"{float(d[(d['kernel'] == 'dense') & (d['tokens'] == tokens)]['time_ms'].iloc[0]):.3g} ms"


def bound_range(run: str = "kernels-h200", max_tokens: int = 4) -> str:
    """Masked kernels' time over their roofline bound at decode sizes: the best kernel of each (T, ρ) at
    T <= max_tokens, and every row at T = 1."""
    d = ffn_masks(run)
    d = d[(d["kernel"] != "dense") & (d["tokens"] <= max_tokens)]
    best = d.groupby(["tokens", "kept_share"])["time_over_bound"].min()
    one = d[d["tokens"] == 1]["time_over_bound"]
    return (f"the best kernel of each batch size T ≤ {max_tokens} and share runs at {best.min():.2f}–{best.max():.2f}× "
            f"its roofline bound, and every T = 1 row at {one.min():.2f}–{one.max():.2f}×")


@lru_cache(maxsize=None)
def overhead(run: str, rel: str) -> dict[str, float]:
    """`name : seconds ratio r` lines of a bench_mask_overhead.py log, as {name: ratio}."""
    out = {}
    for line in path(run, rel).read_text().splitlines():
        m = re.match(r"\s*(.+?)\s*:\s*[\d.]+ s\s+ratio ([\d.]+)", line)
        if m:
            out[re.sub(r"\s+", " ", m.group(1))] = float(m.group(2))
    return out


def overhead_table(run: str = "kernels-h200", rel: str = "gpu_mask_overhead_fused.txt") -> str:
    o = overhead(run, rel)
    modes = ["sparse", "threshold", "centroid", "centroid_only", "random", "neuron_predicted", "predicted"]
    rows = [[f"`{m}`"] + [f"{o[f'{m} (fused) {s}']:.2f} ({o[f'{m} (torch) {s}']:.2f})" for s in ("gate+up+down", "down_in")]
            for m in modes if f"{m} (fused) down_in" in o]
    return md(["mode", "paper set (gate, up, down)", "`down_in`"], rows)


def first_line(run: str, rel: str) -> str:
    return path(run, rel).read_text().splitlines()[0].lstrip("# ").strip()


# ---------------------------------------------------------------- config.yaml

def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@lru_cache(maxsize=None)
def preset(name: str) -> dict:
    """A preset of config.yaml with its `inherits` chain merged (no schema defaults, no checks)."""
    import yaml

    presets = yaml.safe_load((DOCS.parent / "config.yaml").read_text())["presets"]
    p = presets[name]
    return _merge(preset(p["inherits"]), p) if "inherits" in p else p


def key(preset_name: str, dotted: str):
    v = preset(preset_name)
    for part in dotted.split("."):
        v = v[part]
    return v


def n(v) -> str:
    return "all" if v is None else f"{v:,}" if isinstance(v, int) else str(v)


def plan_store(rel: str, store: str, run: str = "plans") -> str:
    """The GB of one store line of a captured storage plan."""
    m = re.search(rf"^\s*{re.escape(store)}\s+([\d.]+)", path(run, rel).read_text(), re.M)
    return m.group(1) if m else "–"


def plan_largest(rel: str, run: str = "plans") -> str:
    rows = re.findall(r"^\s*(\S+(?: \([^)]*\))?)\s+([\d.]+)\s+(\S+)", path(run, rel).read_text(), re.M)
    rows = [r for r in rows if r[0] != "total"]
    name, gb, key_ = max(rows, key=lambda r: float(r[1]))
    return f"{name} ({gb} GB, sized by `{key_}`)"


# ---------------------------------------------------------------- Markdown tables of raw reports

@lru_cache(maxsize=None)
def md_tables(run: str, rel: str) -> list[pd.DataFrame]:
    """Every pipe table of a raw Markdown report, as text DataFrames (header row as columns)."""
    out, cur = [], []
    for line in path(run, rel).read_text().splitlines() + [""]:
        if line.startswith("|"):
            cur.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif cur:
            out.append(pd.DataFrame([r for r in cur[2:]], columns=cur[0]))
            cur = []
    return out


def md_of(df: pd.DataFrame) -> str:
    return md(list(df.columns), df.values.tolist())


def ratio_span(values) -> tuple[float, float]:
    """Lowest and highest number of `a-b` range strings ('-' skipped)."""
    nums = [float(v) for s in values if s not in ("-", "") for v in s.split("-")]
    return min(nums), max(nums)


# ---------------------------------------------------------------- requests, sbatch lines

def sbatch_lines(run: str = "plans", rel: str = "sbatch-mistral7b-wikitext2.txt") -> str:
    """The captured sbatch lines, without job name, log, export and comment."""
    out = []
    for line in path(run, rel).read_text().splitlines():
        rule, _, cmd = line.partition(": ")
        cmd = re.sub(r"--parsable |--job-name \S+ |--output \S+ |--export=\S+ |--comment \S+ ", "", cmd)
        out.append(f"{rule + ':':<23}{cmd}")
    return "```\n" + "\n".join(out) + "\n```\n"


def request_sentence(run: str = "paper-shaped-h200", rel: str = "paper_shaped_h200_rules_fused.md") -> str:
    """How the requests compare with the measured use, from rule_report.py's per-rule table."""
    rules = md_tables(run, rel)[0]
    mem = ratio_span(rules["mem_mb / RSS"])
    mx = rules["max s"].astype(float)
    long_ = rules[mx >= 60]
    short = rules[mx < 60]
    rt_long = ratio_span(long_["runtime / wall"]) if len(long_) else (float("nan"),) * 2
    rt_short = ratio_span(short["runtime / wall"])
    outside = path(run, rel).read_text().split("Requests outside", 1)[1].splitlines()
    return (f"in its run (`docs/results/{run}/{rel}`) every `mem_mb` request is {mem[0]:.1f}–{mem[1]:.1f}× the "
            f"job's measured peak RSS, and rule_report.py found {'no' if outside[1:2] == ['- none'] else 'some'} "
            f"request outside 1.5–4× of the measured use. Jobs under 60 s are exempt from the runtime's upper "
            f"bound (runtime is whole minutes with a floor): their runtime requests are {rt_short[0]:.1f}–"
            f"{rt_short[1]:.0f}× their wall time; the rules with a job of a minute or more "
            f"({', '.join(f'`{r}`' for r in long_.rule)}) request {rt_long[0]:.1f}–{rt_long[1]:.1f}× theirs "
            "(a rule's range spans all its jobs, the short ones included).\n")


def disk_vs_plan(run: str, plan_rel: str, du_rel: str) -> str:
    """Planned GB per store group (a storage plan's lines) against `du -b` of the run's folders."""
    plan = {}
    for name, gb in re.findall(r"^\s*(\S+)\s+([\d.]+)\s+\S", path(run, plan_rel).read_text(), re.M):
        if name != "total":
            group = name.split("/")[0] if name.split("/")[0] in ("ffn_inputs", "tokens") else "/".join(name.split("/")[:2])
            plan[group] = plan.get(group, 0.0) + float(gb)
    du = {}
    for line in path(run, du_rel).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        b, p = line.split(None, 1)
        du[p.split("/", 2)[-1] if p.startswith("results/paper-shaped/") else p] = int(b)
    groups = [("patterns and magnitudes", [g for g in plan if g.startswith(("patterns", "magnitudes"))], ["patterns"]),
              ("FFN inputs", ["ffn_inputs"], ["ffn_inputs"]),
              ("centroids and predictors", ["centroids", "predictors"], ["clusters", "predictors"]),
              ("tokens", ["tokens"], ["tokens"])]
    rows = []
    for label, pk, dk in groups:
        planned = sum(plan.get(g, 0.0) for g in pk)
        got = sum(du.get(d, 0) for d in dk) / 1e9
        rows.append([label, f"{planned:.3f}", f"{got:.3f}"])
    rows.append(["**all stores**", f"{sum(plan.values()):.2f}", f"{sum(du.get(d, 0) for _, _, ds in groups for d in ds) / 1e9:.2f}"])
    models = [(p, b) for p, b in du.items() if p.startswith("results/models/")]
    if models:
        rows.append([f"model folder (`{models[0][0]}`, beside the stores)", "–", f"{models[0][1] / 1e9:.2f}"])
    patt_test = sum(v for g, v in plan.items() if g.startswith("patterns/test"))
    patt_train = sum(v for g, v in plan.items() if g.startswith("patterns/train"))
    return (md(["stores", "planned GB", "on disk GB (`du -b`)"], rows)
            + f"\n(Planned pattern stores: {patt_train:.2f} GB train, {patt_test:.2f} GB test.)\n")


# ---------------------------------------------------------------- KL and the ranking of the lines

def _kl_lines(run: str, share: float) -> pd.DataFrame:
    n = near(run, share)
    return n[n.kl.notna()] if "kl" in n else n.iloc[:0]


def _swaps(a: list[str], b: list[str]) -> list[tuple[str, str]]:
    """Pairs of lines that two orderings put the other way round."""
    pos = {l: i for i, l in enumerate(b)}
    return [(x, y) for i, x in enumerate(a) for y in a[i + 1:] if pos[x] > pos[y]]


def kendall_tau(a: list[str], b: list[str]) -> float:
    """Kendall's τ between two orderings of the same lines (1: the same order, -1: reversed)."""
    k = len(a)
    return 1.0 if k < 2 else 1 - 4 * len(_swaps(a, b)) / (k * (k - 1))


def _agreement(n: pd.DataFrame, top: int = 5) -> tuple[float, list[tuple[str, str]]]:
    """τ between the perplexity and the KL order of the lines in `n`, and the pairs swapped among the `top` best
    by perplexity (the ones a reader acts on; swaps further down are mostly within each other's intervals)."""
    by_r, by_kl = list(n.sort_values("ratio").line), list(n.sort_values("kl").line)
    head = by_r[:top]
    return kendall_tau(by_r, by_kl), _swaps(head, [l for l in by_kl if l in head])


def best_by_metric(run: str, shares=(0.4, 0.6, 0.8), top: int = 5) -> str:
    """Per compute share: the best line by the perplexity ratio to dense and the best by KL from dense (95 %
    block-bootstrap intervals), Kendall's τ between the two orders of all lines, and the swaps among the `top` best."""
    rows = []
    for s in shares:
        n = _kl_lines(run, s)
        tau, sw = _agreement(n, top)
        same = ("the same" if not sw else "swapped: " + "; ".join(f"`{x}` / `{y}`" for x, y in sw))
        by = [V.best_of(run, s, metric=m) for m in ("log_ratio", "kl")]
        cell = lambda v, c, fmt, unit: (f"`{v['best'].line}`" + (f" and `{v['runner_up'].line}` tie" if v["tie"] else "")
                                        + f" @ {v['best'].compute_share:.2f}: "
                                        + iv(v["best"][c], v["best"][c + "_lo"], v["best"][c + "_hi"], fmt) + unit)
        rows.append([f"≈ {s:g}", len(n), cell(by[0], "ratio", "{:.2f}×", ""), cell(by[1], "kl", "{:.3g}", " nats"),
                     f"{tau:.2f}", same])
    return md(["compute share", "lines", "best deployable by perplexity (ratio to dense)", "best deployable by KL from dense",
               "Kendall τ, all lines", f"order of the {top} best"], rows)


def ranking_sentence(run: str, shares=(0.4, 0.6, 0.8), top: int = 5) -> str:
    """Whether perplexity and KL rank the lines the same way at each share: τ over all lines, swaps among the best."""
    parts = []
    for s in shares:
        n = _kl_lines(run, s)
        tau, sw = _agreement(n, top)
        parts.append(f"at {s:g}, τ = {tau:.2f} over {len(n)} lines, and the {min(top, len(n))} best by perplexity "
                     + ("are in the same order by KL" if not sw else
                        "swap " + ", ".join(f"`{x}` and `{y}`" for x, y in sw) + " by KL"))
    return "Perplexity and KL order the lines alike (Kendall's τ between the two orders): " + "; ".join(parts) + ".\n"


_CLUSTER = r"^(oracle|predicted)[-.].*apc"


def cluster_stand(run: str, shares=(0.4, 0.6, 0.8)) -> str:
    """Per compute share: the best line, and the best token-cluster and experts lines, each with an oracle choice
    (the true pattern's centroid; the true top experts) and with a choice made before the FFN runs (a predictor or a
    router): ratio to dense, and in brackets that ratio over the best line's."""
    kinds = [("token clusters, oracle (upper bound)", r"^oracle[-.].*apc"), ("token clusters, predicted", r"^predicted[-.].*apc"),
             ("experts, oracle router (upper bound)", r"^experts-oracle"), ("experts, learned or analytic router", r"^experts-(learned|analytic)")]
    rows = []
    for s in shares:
        n = near(run, s)
        best = V.best_of(run, s)["best"]
        cells = [f"≈ {s:g}", f"`{best.line}`: {best.ratio:.3g}×, KL {best.kl:.3g}"]
        for _, pat in kinds:
            g = n[n.line.str.match(pat)]
            r = None if g.empty else g.iloc[0]
            cells.append("–" if r is None else f"`{r.line}` @ {r.compute_share:.2f}: {r.ratio:.3g}× ({r.ratio / best.ratio:.2f}×), "
                         f"KL {r.kl:.3g}")
        rows.append(cells)
    return md(["compute share", "best deployable line (ratio to dense, KL)"] + [k for k, _ in kinds], rows)


def found_sentence(run: str, decode_run: str | None = None, decode_line: str | None = None,
                   shares=(0.4, 0.6, 0.8)) -> str:
    """The README's finding in two sentences: the best line per compute share on perplexity and on KL, whether the
    metrics agree, where the best token-cluster and experts lines stand, and TEAL's decode speed-up at batch 1 and 16."""
    by_r = [V.best_of(run, s) for s in shares]
    by_k = [V.best_of(run, s, metric="kl") for s in shares]
    at = lambda vs, label: "; ".join(f"at {s:g} {V.claim(v, label)}" for s, v in zip(shares, vs))
    same = all(a["best"].line == b["best"].line and a["tie"] == b["tie"] for a, b in zip(by_r, by_k))
    out = (f"Among the deployable lines (points within {V.TOL:g} of each compute share), on perplexity: "
           + at(by_r, "line") + (". On KL the verdicts are the same" if same else ". On KL: " + at(by_k, "line by KL")))
    agreement = [_agreement(_kl_lines(run, s)) for s in shares]
    n_lines = frontier(run).line.nunique()
    out += ("; Kendall's τ between the perplexity and the KL order of the lines within that tolerance is "
            + " / ".join(f"{t:.2f} ({len(_kl_lines(run, s))} of {n_lines} lines)" for s, (t, _) in zip(shares, agreement))
            + ", and the five best by perplexity "
            + ("keep their order by KL at every share." if not any(sw for _, sw in agreement) else
               "keep their order by KL except " + "; ".join(
                   f"at {s:g} " + ", ".join(f"`{x}` / `{y}`" for x, y in sw) for s, (_, sw) in zip(shares, agreement) if sw)
               + " ([docs/divergence.md](docs/divergence.md))."))
    out += " " + V.family_claims(run, 0.6)
    if decode_run is None:
        return out + "\n"
    card = str(decode(decode_run).device.iloc[0]).replace("NVIDIA ", "")
    out += (f" On an {card}, `{decode_line}` at FFN compute 0.6 decodes a model of Mistral-7B's shape with random weights "
            f"at {decode_cell(decode_run, 1, decode_line, 0.6)} at batch 1, and at "
            f"{decode_cell(decode_run, 16, decode_line, 0.6)} at batch 16 (compiled step, "
            f"[docs/decode.md](docs/decode.md)).")
    return out + "\n"


def kl_crossing_sentence(run: str, kls=(0.05, 0.2)) -> str:
    """Which lines reach each mean KL level within their points, and at what compute share."""
    cross = _crossings(frontier(run))
    out = []
    for v in kls:
        c = f"share_kl{v:g}"
        got = cross[cross[c].notna()].sort_values(c)
        lines = ", ".join(f"`{l}` at {r[c]:.2f} [{r[c + '_lo']:.2f}, {r[c + '_hi']:.2f}]" for l, r in got.iterrows())
        out.append(f"a mean KL of {v:g} nats: " + (lines or "no line"))
        
    return "Within their points the lines reach " + "; ".join(out) + ".\n"


def topk_error_sentence(run: str) -> str:
    """How far the top-k KL (a lower bound) falls below the exact KL over the frontier points of a run."""
    fr = frontier(run).dropna(subset=["kl", "kl_topk"])
    fr = fr[fr.kl > 0]
    rel = 1 - fr.kl_topk / fr.kl
    gap = fr.kl - fr.kl_topk
    return (f"Over the {len(fr)} frontier points of `{run}` the top-64 KL is {rel.min():.1%} to {rel.max():.1%} below "
            f"the exact KL (median {rel.median():.1%}; absolute gaps {gap.min():.2g} to {gap.max():.2g} nats).\n")


def units_sentence(run: str, line: str) -> str:
    """The scored tokens and bootstrap blocks of `line`'s points (every line but a prompt-scored one has the same)."""
    fr = frontier(run)
    r = fr[fr.line == line].iloc[0]
    return f"{int(r.tokens):,} scored tokens in {int(r.units)} blocks"


def _no_window_intervals(fr: pd.DataFrame) -> pd.DataFrame:
    """A table collected before the block bootstrap (no `units` column) resampled windows: its bounds are not
    intervals (2 windows on the default), so they are dropped and print as n/a."""
    if "units" in fr.columns:
        return fr
    fr = fr.copy()
    for c in [c for c in fr.columns if c.endswith("_lo") or c.endswith("_hi")]:
        fr[c] = np.nan
    return fr


def _ratio_at(g: pd.DataFrame, compute_share: float) -> float:
    """A line's ratio to dense at `compute_share`, linear in log ratio between its two nearest points; NaN outside
    its points."""
    g = g.sort_values("compute_share")
    xs, ys = g.compute_share.to_numpy(float), np.log(g.ratio.to_numpy(float))
    if not len(g) or not xs.min() <= compute_share <= xs.max():
        return float("nan")
    return float(np.exp(np.interp(compute_share, xs, ys)))


def equal_compute_table(run: str, line: str, refs: tuple) -> str:
    """Each point of `line` beside the reference lines at the same compute share (their ratio to dense, linear in
    log ratio between their two nearest points; – outside their points) and at the same nominal share (the
    `frontier.kept_shares` entry: the rotation's FLOPs, or a block split, not counted)."""
    fr = frontier(run)
    rows = []
    for r in fr[fr.line == line].sort_values("compute_share").itertuples():
        row = [f"{r.compute_share:.3f} ({r.share:g})", iv(r.ratio, r.ratio_lo, r.ratio_hi, "{:.3f}×")]
        for ref in refs:
            g = fr[fr.line == ref]
            v = _ratio_at(g, r.compute_share)
            at = "–" if np.isnan(v) else f"{v:.3f}×"
            k = g[np.isclose(g.share.to_numpy(float), r.share)]
            row += [at, "–" if k.empty else f"{k.ratio.iloc[0]:.3f}× @ {k.compute_share.iloc[0]:.2f}"]
        rows.append(row)
    head = [f"`{line}`: compute (nominal share)", "ratio to dense [95 %]"]
    for ref in refs:
        head += [f"`{ref}` at equal compute", f"`{ref}` at the same nominal share"]
    return md(head, rows)


def equal_compute_sentence(run: str, line: str, ref: str) -> str:
    """Whether `line` beats `ref` at the same nominal share and at equal compute, over the points where both exist."""
    fr = frontier(run)
    g = fr[fr.line == ref]
    nominal, equal = [], []
    for r in fr[fr.line == line].sort_values("compute_share").itertuples():
        k = g[np.isclose(g.share.to_numpy(float), r.share)]
        if len(k):
            nominal.append((r.share, r.ratio < k.ratio.iloc[0]))
        v = _ratio_at(g, r.compute_share)
        if not np.isnan(v):
            equal.append((r.compute_share, r.ratio < v))
    say = lambda pts: ("better at " + ", ".join(f"{a:.2f}" for a, w in pts if w) if any(w for _, w in pts) else "better nowhere") + \
        ("" if all(w for _, w in pts) else "; worse at " + ", ".join(f"{a:.2f}" for a, w in pts if not w))
    return (f"Against `{ref}`, `{line}` is, at the same nominal share, {say(nominal)}; at equal compute "
            f"(its extra FLOPs counted), {say(equal)}.\n")


def lines_table(run: str, lines: tuple) -> str:
    """Each named line's points: compute share (rotation share where counted), tokens, perplexity, ratio to dense,
    and KL / top-1 where the run has them (95 % block-bootstrap intervals; n/a for a run without blocks)."""
    fr = _no_window_intervals(frontier(run))
    has_kl = "kl" in fr.columns
    rows = []
    for line in lines:
        for r in fr[fr.line == line].sort_values("compute_share").itertuples():
            d = r._asdict()
            row = [f"`{line}`", f"{r.compute_share:.3f}", f"{d.get('rotation_flops_share', 0) or 0:.3f}", f"{int(r.tokens):,}",
                   iv(r.ppl, r.ppl_lo, r.ppl_hi, "{:.2f}"),
                   iv(d.get("ratio", np.nan), d.get("ratio_lo", np.nan), d.get("ratio_hi", np.nan), "{:.2f}×")]
            if has_kl:
                row += [iv(r.kl, r.kl_lo, r.kl_hi), iv(r.top1, r.top1_lo, r.top1_hi, "{:.3f}")]
            rows.append(row)
    head = ["line", "compute share", "of it rotation", "tokens", "perplexity [95 %]", "ratio to dense [95 %]"]
    return md(head + (["KL, nats [95 %]", "top-1 [95 %]"] if has_kl else []), rows)


# ---------------------------------------------------------------- neuron experts

def _nearest(fr: pd.DataFrame, line: str, share: float):
    g = fr[fr.line == line]
    return None if g.empty else g.iloc[int(np.argmin(np.abs(g.compute_share.to_numpy(float) - share)))]


def experts_table(run: str, share: float, ref: str) -> str:
    """Every expert line of a grid at the compute share nearest `share`, beside the reference line, the token-cluster
    predicted line and the static mask: perplexity, its ratio to the reference's, and the rows read at B = 16."""
    fr = _no_window_intervals(table(run, "frontier.csv"))
    names = sorted(l for l in fr.line.unique() if l.startswith("experts-"))
    names += [l for l in fr.line.unique() if re.match(r"^predicted-linear-m1\.", l) or "static" in l] + [ref]
    base = V.nearest_within(fr, ref, share)
    rows = []
    for l in names:
        r = V.nearest_within(fr, l, share)  # a line without a point within the tolerance is left out
        if r is None:
            continue
        rows.append([f"`{l}`" + ("" if V.deployable(l) else " (upper bound)"), f"{r.compute_share:.3f}",
                     iv(r.ppl, r.ppl_lo, r.ppl_hi, "{:.2f}"), f"{r.ppl / base.ppl:.2f}", f"{r.union_b16:.3f}"])
    rows.sort(key=lambda row: float(row[3]))
    return md(["line", "compute share", "perplexity [95 %]", f"÷ `{ref}`", "rows read at B = 16"], rows)


def experts_goals(grid: str, run: str, share: float, train_free: tuple) -> str:
    """The expert goals and the kernel condition at compute `share`, met or not, with their figures: the best
    deployable (non-oracle) expert line against the best training-free line, the oracle router's best line as the
    upper bound, and the rows read at B = 16."""
    out = []
    for name in (run, grid):
        fr = table(name, "frontier.csv")
        exp = [l for l in fr.line.unique() if l.startswith("experts-") and V.deployable(l)]
        orc = [l for l in fr.line.unique() if l.startswith("experts-") and not V.deployable(l)]
        at = lambda lines: [r for r in (V.nearest_within(fr, l, share) for l in lines) if r is not None]
        best = min(at([l for l in fr.line.unique() if l in train_free]), key=lambda r: r.ppl)
        e = min(at(exp), key=lambda r: r.ppl)
        q = e.ppl / best.ppl
        o = min(at(orc), key=lambda r: r.ppl) if at(orc) else None
        b16 = min(r.union_b16 for r in at(exp))
        out.append([f"`{name}`", f"`{e.line}` {ppl(e.ppl)} @ {e.compute_share:.2f} against `{best.line}` {ppl(best.ppl)} "
                    f"@ {best.compute_share:.2f}: {q:.2f}×", "met" if q <= 1.25 else "not met",
                    "met" if q <= 1.5 else "not met: no expert kernel built",
                    "–" if o is None else f"`{o.line}` {ppl(o.ppl)}: {o.ppl / best.ppl:.2f}×",
                    f"{b16:.3f}", "met" if b16 <= 0.8 else "not met"])
    return md(["run", f"best deployable expert line ÷ best training-free line (points within {V.TOL:g})", "≤ 1.25×", "kernel condition ≤ 1.5×",
               "oracle router (upper bound) ÷ best", "fewest rows read at B = 16", "≤ 0.8"], out)


def coverage_sentence(run: str = "frontier-gpu", cell: str = "s0.2-e16", k: int = 8) -> str:
    c = table(run, "coverage_test.csv")
    c = c[(c.cell == cell) & (c.k == k)].set_index("router")
    return (f"Held-out mass coverage of cell {cell} at k = {k}: " + ", ".join(
        f"{r} {c.loc[r, 'mass_coverage']:.3f}" for r in ("learned", "analytic", "oracle") if r in c.index) + ".\n")


def coverage_table(run: str, ks=None) -> str:
    """Held-out coverage (share of active neurons inside shared ∪ chosen experts) per cell and router, at each k."""
    c = table(run, "coverage_test.csv")
    ks = sorted(c.k.unique()) if ks is None else ks
    rows = []
    for (cell, router), g in c.groupby(["cell", "router"], sort=True):
        g = g.set_index("k")
        rows.append([f"`{cell}`", router] + [f"{g.loc[k, 'coverage']:.3f} ({g.loc[k, 'density']:.2f})" if k in g.index else "–"
                                             for k in ks])
    return md(["cell", "router"] + [f"k = {k}: coverage (density)" for k in ks], rows)


def router_sentence(run: str, share: float = 0.6) -> str:
    """Per cell, the learned and the analytic router's perplexity at compute `share`."""
    fr = frontier(run)
    cells = sorted({m for m in fr.line.str.extract(r"^experts-\w+\.(s[\d.]+-e\d+)$")[0].dropna()})
    parts = []
    for cell in cells:
        a, b = _nearest(fr, f"experts-learned.{cell}", share), _nearest(fr, f"experts-analytic.{cell}", share)
        if a is not None and b is not None:
            parts.append(f"{cell} {ppl(a.ppl)} against {ppl(b.ppl)}")
    return f"Learned against analytic at compute ≈ {share:g}: " + "; ".join(parts) + ". "


def _column_sentence(run: str, lines: list[str], share: float, column: str, fmt: str) -> str:
    """One frontier column at the point nearest `share` for each named line (n/a where the point has none)."""
    fr = frontier(run)
    cells = []
    for l in lines:
        r = _nearest(fr, l, share)
        if r is not None:
            cells.append(f"`{l}` n/a" if pd.isna(r[column]) else f"`{l}` {fmt.format(r[column])}")
    return f"`{column}` at compute ≈ {share:g}: " + ", ".join(cells) + ".\n"


def batch_sentence(run: str, lines: list[str], share: float = 0.6, column: str = "union_b16") -> str:
    """One batch-view column at the point nearest `share` for each named line."""
    return _column_sentence(run, lines, share, column, "{:.3f}")


def time_share_sentence(run: str, lines: list[str], share: float = 0.6, column: str = "time_share_decode") -> str:
    if column not in frontier(run):
        return f"The run has no `{column}` column.\n"
    return _column_sentence(run, lines, share, column, "{:.2f}")


# ---------------------------------------------------------------- end-to-end decode

def decode(run: str) -> pd.DataFrame:
    return table(run, "decode.csv")


def kernels(run: str) -> pd.DataFrame:
    return table(run, "kernels.csv")


def device_line(run: str) -> str:
    """The header comment of the kernel table: the device, its copy bandwidth (and product rate)."""
    for rel in ("kernels.log", "kernels.csv"):
        for line in path(run, rel).read_text().splitlines():
            if "copy bandwidth" in line:
                return line.lstrip("# ").split("; ")[-1].strip()
    return "–"


def tests_line(run: str, rel: str = "kernel_tests.log") -> str:
    return path(run, rel).read_text().strip().splitlines()[-1].strip()


def _dec(df: pd.DataFrame, batch: int, line: str, share: float):
    g = df[(df.batch == batch) & (df.line == line) & np.isclose(df.compute_share, share)]
    return g.iloc[0]


def decode_cell(run: str, batch: int, line: str, share: float) -> str:
    d = decode(run)
    r, base = _dec(d, batch, line, share), _dec(d, batch, "dense", 1.0)
    return (f"{r.speedup:.3f}× dense ({base.ms_per_token:.3f} → {r.ms_per_token:.3f} ms/token; "
            f"bound {r.bound_speedup:.3f}×)")


def decode_table(run: str) -> str:
    """The decode table: ms per output token (median, min–max), speed-up over dense, its byte bound, the time over
    the line's own byte bound, the teacher-forced token match and the FFN's error against its torch reference."""
    rows = []
    for r in decode(run).sort_values(["batch"], kind="stable").itertuples():
        rows.append([r.batch, r.line, f"{r.compute_share:g}", f"{r.kept_share:.2f}", f"{r.union_share:.3f}",
                     f"{r.ms_per_token:.3f} ({r.ms_min:.3f}–{r.ms_max:.3f})", f"{r.speedup:.3f}×", f"{r.bound_speedup:.3f}×",
                     f"{r.time_over_bound:.2f}", f"{r.tokens_match}/{r.tokens_checked}", f"{float(r.ffn_rel_err):.1e}"])
    return md(["batch", "line", "FFN compute", "kept", "union", "ms/token (min–max)", "speed-up", "bound",
               "time/bound", "tokens", "FFN err"], rows)


def kernel_table(run: str) -> str:
    """One FFN layer's kernels: µs (median of CUDA-graph replays), over dense, the byte bound and the time over it."""
    rows = [[r.kernel, r.tokens, f"{r.rho:g}", f"{r.union:.3f}", f"{r.ms * 1e3:.1f}", f"{r.ratio:.3f}",
             f"{r.bound_ms * 1e3:.1f}", f"{r.time_over_bound:.3f}"] for r in kernels(run).itertuples()]
    return md(["kernel", "T", "rho", "union", "µs", "/ dense", "bound µs", "/ bound"], rows)


def _stop_batch(d: pd.DataFrame, line: str, share: float) -> str:
    for b in sorted(d.batch.unique()):
        if _dec(d, b, line, share).speedup < 1:
            return str(b)
    return f"beyond {d.batch.max()}"


def decode_goals(run: str, line: str) -> str:
    """The decode goals of `line` (its kernel and its decode step: TEAL's), met or not, with their figures and bounds."""
    k, d = kernels(run), decode(run)
    kk = lambda name, t, rho: k[(k.kernel == name) & (k.tokens == t) & np.isclose(k.rho, rho)].iloc[0]
    rows = []
    for rho in (0.4, 0.6):
        r = kk(line, 1, rho)
        rows.append([f"`{line}` kernel, T = 1, within 1.25× of its bound, rho {rho:g}",
                     f"{r.ms * 1e3:.1f} µs against {r.bound_ms * 1e3:.1f} µs: {r.time_over_bound:.2f}×",
                     "met" if r.time_over_bound <= 1.25 else "not met"])
    pt = [kk("per_token", 1, rho) for rho in (0.4, 0.6, 0.8)]
    ok = [r.ratio <= 1.25 * r.rho for r in pt]
    rows.append([f"per-token kernel, T = 1, within 1.25 rho of dense ({kk('dense', 1, 1.0).ms * 1e3:.1f} µs)",
                 " / ".join(f"{r.ratio:.3f}" for r in pt) + " of dense at rho 0.4 / 0.6 / 0.8 (goal "
                 + " / ".join(f"{1.25 * r.rho:.2f}" for r in pt) + ")",
                 ", ".join(f"{'met' if o else 'not met'} at {r.rho:g}" for o, r in zip(ok, pt))])
    t = _dec(d, 1, line, 0.6)
    rows.append([f"`{line}` at FFN compute 0.6, batch 1, ≥ 1.35× dense", decode_cell(run, 1, line, 0.6),
                 "met" if t.speedup >= 1.35 else "not met"])
    big = d.batch.max()
    cells = []
    for line in [l for l in d.line.unique() if l != "dense"]:
        g = d[(d.batch == big) & (d.line == line)].sort_values("compute_share")
        cells.append(f"{line} " + " / ".join(f"{r.speedup:.3f}× (bound {r.bound_speedup:.3f}×)" for r in g.itertuples()))
    rows.append([f"batch {big}: every line at compute " + " / ".join(f"{c:g}" for c in sorted(d[d.line == line].compute_share.unique())),
                 "; ".join(cells), "–"])
    stops = []
    for line in [l for l in d.line.unique() if l != "dense"]:
        stops.append(f"{line} " + " / ".join(_stop_batch(d, line, c) for c in sorted(d[d.line == line].compute_share.unique())))
    rows.append(["first batch at which a line is slower than dense (per compute share)", "; ".join(stops), "–"])
    return md(["goal", "measured", "met"], rows)


def profile_table(run: str = "decode_h200") -> str:
    """One decode step (CUDA graph, batch 1) split into FFN, attention block, the rest and launch gaps (ms)."""
    rows = []
    for c in js(run, "profile.json"):
        ffn = f"{c['ffn_ms']:.3f}" + (f" (sparse kernels {c['k_ffn_sparse_ms']:.3f})" if c["k_ffn_sparse_ms"] else "")
        rows.append([c["cell"], f"{c['full_ms']:.3f}", ffn, f"{c['attn_ms']:.3f}", f"{c['rest_ms']:.3f}", f"{c['gaps_ms']:.3f}"])
    return md(["cell (line:batch:compute)", "step ms", "FFN", "attention block", "rest (embedding, final norm, LM head)",
               "launch gaps"], rows)


def attention_bound_sentence(run: str, line: str, share: float = 0.6, layers: int = 32) -> str:
    """What the line's step would take with its FFN at the byte bound (the kernel table's dense bound per layer times
    the share, over `layers` layers) and everything else as profiled, and the speed-up over dense that leaves."""
    k = kernels(run)
    per_layer = float(k[(k.kernel == "dense") & (k.tokens == 1)].bound_ms.iloc[0])
    prof = {c["cell"]: c for c in js(run, "profile.json")}
    dense_c, c = prof["dense:1:1"], prof[f"{line}:1:{share:g}"]
    ffn_bound = share * per_layer * layers
    step = c["attn_ms"] + c["rest_ms"] + c["gaps_ms"] + ffn_bound
    return (f"`{line}`'s FFN at compute {share:g} takes {c['ffn_ms']:.2f} ms of the step against a byte bound of "
            f"{ffn_bound:.2f} ms ({share:g} × {layers} layers × {per_layer * 1e3:.1f} µs); with its FFN at that bound and the "
            f"rest as profiled ({c['attn_ms']:.2f} ms attention block, {c['rest_ms']:.2f} ms rest, {c['gaps_ms']:.2f} ms gaps) "
            f"the step would take {step:.2f} ms, {dense_c['full_ms'] / step:.2f}× dense's {dense_c['full_ms']:.2f} ms")


def decode_range(run: str, column: str, batch: int | None = None, exclude=("dense",), fmt: str = "{:.2g}") -> str:
    d = decode(run)
    d = d[~d.line.isin(exclude)]
    if batch is not None:
        d = d[d.batch == batch]
    v = d[column].astype(float)
    return f"{fmt.format(v.min())} to {fmt.format(v.max())}"


# ---------------------------------------------------------------- plots

def draw_plots() -> list[Path]:
    """Redraw the frontier plots of every collected run (a folder with a frontier table and a dense perplexity;
    the partial runs beside them carry only tables) from those committed files."""
    from apc.results.frontier_plots import make_frontier_plots

    out = []
    # only collected runs (docs/collect_run.py: a frontier table beside the reference perplexities); the loose
    # tables of partial reruns (expert grids, line reruns) have no plots
    for run_dir in sorted(p for p in RESULTS.iterdir() if (p / "frontier.csv").exists() and (p / "ppl/dense.json").exists()):
        refs = [run_dir / "ppl/dense.json"] + sorted((run_dir / "ppl").glob("sparse-*.json"))
        out += make_frontier_plots(run_dir / "plots", run_dir / "frontier.csv", refs=[r for r in refs if r.exists()])
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["plots"]:
        for p in draw_plots():
            print(p.relative_to(DOCS.parent))
    else:
        raise SystemExit("usage: python docs/render.py plots")


# ---------------------------------------------------------------- the line registry

def line_registry_table() -> str:
    """Every registered line: its line strings, what decides its mask, its scope, whether it is deployable,
    whether it calibrates, its `frontier.lines` keys (training-free lines; the others come from the cells) and
    the first sentence of its module's docstring."""
    from apc.lines import all_lines

    cell = lambda text: text.replace("``", "`").replace("|", "\\|").replace("\n", " ")
    rows = []
    for family, impl in all_lines().items():
        doc = (sys.modules[type(impl).__module__].__doc__ or "").strip()
        head, _, rest = doc.partition(": ")
        names = ", ".join(f"`{n}`" for n in impl.line_names(impl.config, {})) if impl.training_free else cell(head)
        keys = "; ".join(f"`{k}` (default `{json.dumps(impl.config.get(k))}`): {cell(v.get('description', ''))}"
                         for k, v in impl.config_schema.items()) if impl.training_free else "from the cells"
        rows.append([f"`{family}`", names, impl.decided_by, impl.scope, "yes" if impl.deployable else "upper bound",
                     "yes" if impl.calibrates else "–", keys or "–", cell(rest.split(". ")[0].split("; ")[0])])
    return md(["family", "lines", "decided by", "scope", "deployable", "calibrates", "settings", "what"], rows)


# ---------------------------------------------------------------- generation agreement

def generation_table(run: str, share: float = 0.6) -> str:
    """Every deployable line's point nearest compute `share` (within the verdicts' tolerance): its generation
    agreement (mean prefix equal to dense and share of agreeing positions, 95 % intervals over prompts) beside its
    ratio to dense and KL, best agreement first."""
    n = V.near(run, share, V.TOL)
    if "gen_agree" not in n.columns:
        return "(this run measured no generation agreement)\n"
    n = n.sort_values("gen_agree", ascending=False)
    rows = [[f"`{r.line}`" + ("" if r.deployable else " (upper bound)"), f"{r.compute_share:.3f}",
             iv(r.gen_prefix, r.gen_prefix_lo, r.gen_prefix_hi, "{:.1f}"), iv(r.gen_agree, r.gen_agree_lo, r.gen_agree_hi, "{:.3f}"),
             iv(r.ratio, r.ratio_lo, r.ratio_hi, "{:.3f}×"), iv(r.kl, r.kl_lo, r.kl_hi)] for r in n.itertuples()]
    return md(["line", "compute share", "prefix equal to dense, tokens [95 %]", "agreeing positions [95 %]",
               "ratio to dense [95 %]", "KL, nats [95 %]"], rows)


def generation_samples(run: str, keys: list[str]) -> str:
    """The sample prompts of `generation_samples.json` side by side: dense's continuation and those of `keys`
    (``{line}@{share}``), each with its prefix equal to dense."""
    d = js(run, "generation_samples.json")
    have = {p["key"]: p for p in d["points"]}
    missing = [k for k in keys if k not in have]
    if missing:
        raise KeyError(f"docs/results/{run}/generation_samples.json has no point {missing[0]!r}")
    clean = lambda t: " ".join(t.replace("|", "\\|").split())
    out = []
    for p in d["prompts"]:
        out.append(f"**Prompt {p['index']}** (test window {p['window']}, from token {p['start']}): "
                   f"“{clean(p['prompt'])}”\n")
        rows = [["dense", "–", clean(p["continuations"]["dense"]["text"])]]
        for k in keys:
            c = p["continuations"][k]
            pt = have[k]
            rows.append([f"`{pt['line']}` at compute {pt['compute_share']:.2f}", str(c["prefix"]), clean(c["text"])])
        out.append(md(["continuation", "tokens equal to dense", "text"], rows))
    return "\n".join(out)


def against_table(run: str, lines: tuple, refs: tuple, shares=(0.4, 0.6, 0.8)) -> str:
    """Each of `lines` against each of `refs` at each compute share: its ratio to dense, the perplexity ratio of the
    two with its paired interval, the paired KL difference, and the verdict (better, worse or tie: the paired
    interval of the log ratio excludes zero or not); points within the verdicts' tolerance."""
    rows = []
    for line in lines:
        for ref in refs:
            for share in shares:
                n = V.near(run, share, V.TOL).set_index("line", drop=False)
                if line not in n.index or ref not in n.index:
                    continue
                a, b = n.loc[line], n.loc[ref]
                ppl_v = V.compare(run, share, a, b)
                kl_v = V.compare(run, share, a, b, metric="kl")
                rows.append([f"`{line}`", f"`{ref}`", f"{share:g}",
                             iv(a.ratio, a.ratio_lo, a.ratio_hi, "{:.3f}×") + " / " + iv(b.ratio, b.ratio_lo, b.ratio_hi, "{:.3f}×"),
                             ppl_v["text"].split(", paired")[0], kl_v["text"].split(", paired")[0],
                             ppl_v["verdict"] if ppl_v["paired"] else f"{ppl_v['verdict']} (unpaired)"])
    return md(["line", "against", "compute share", "ratio to dense: line / against [95 %]",
               "line ÷ against, paired [95 %]", "KL difference, paired [95 %]", "verdict (perplexity)"], rows)


def new_lines_sentence(run: str, lines: tuple, refs: tuple, share: float = 0.6) -> str:
    """Where each of `lines` stands at compute `share` against each of `refs`: the paired perplexity ratio and the
    verdict (:func:`against_table` has every share)."""
    n = V.near(run, share, V.TOL).set_index("line", drop=False)
    parts = []
    for line in lines:
        if line not in n.index:
            continue
        said = []
        for ref in refs:
            if ref in n.index:
                c = V.compare(run, share, n.loc[line], n.loc[ref])
                word = {"better": "beats", "worse": "loses to", "tie": "ties with"}.get(c["verdict"], "is not compared with")
                said.append(f"{word} `{ref}` ({c['text'].split(', paired')[0]})")
        parts.append(f"`{line}` " + " and ".join(said))
    return (f"The lines added as one file each, at compute {share:g}: " + "; ".join(parts)
            + " ([docs/results.md](docs/results.md) has every share).\n") if parts else ""


def model_scope_table(run: str, line: str, ffn_line: str) -> str:
    """A line of `model` compute scope point by point: its whole-model sparsity (1 − kept share), compute share over
    every linear layer and the FFN's own, the attention inputs' kept shares, perplexity ratio to dense, KL, top-1 and
    generation agreement (95 % intervals), and `ffn_line` (of `ffn` scope, the same FFN thresholds) at the same kept
    share where it has a point there: what masking the attention inputs too costs (unpaired: the folder keeps no
    per-token arrays)."""
    fr = frontier(run)
    ref = fr[fr.line == ffn_line].set_index("share")
    rows = []
    for r in fr[fr.line == line].sort_values("share", ascending=False).itertuples():
        hit = ref[np.isclose(ref.index.to_numpy(float), r.share)]
        rows.append([f"{1 - r.share:.2f}", f"{r.compute_share:.3f}", f"{r.ffn_compute_share:.3f}",
                     f"{r.attn_qkv_share:.3f} / {r.attn_o_share:.3f}", iv(r.ratio, r.ratio_lo, r.ratio_hi, "{:.3f}×"),
                     iv(r.kl, r.kl_lo, r.kl_hi, "{:.4f}"), iv(r.top1, r.top1_lo, r.top1_hi, "{:.3f}"),
                     iv(r.gen_agree, r.gen_agree_lo, r.gen_agree_hi, "{:.3f}"), f"{int(r.tokens):,}",
                     "–" if hit.empty else iv(hit.ratio.iloc[0], hit.ratio_lo.iloc[0], hit.ratio_hi.iloc[0], "{:.3f}×")
                     + f" @ {hit.compute_share.iloc[0]:.2f}"])
    return md(["whole-model sparsity", "compute share, every linear layer", "FFN compute share",
               "q/k/v, o inputs kept", "perplexity ÷ dense [95 %]", "KL, nats [95 %]", "top-1 [95 %]",
               "generation agreement [95 %]", "tokens",
               f"`{ffn_line}` at the same kept share (FFN inputs only): perplexity ÷ dense @ FFN compute"], rows)
