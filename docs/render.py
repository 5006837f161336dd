"""Markdown tables and sentences of the docs, rendered from the committed raw outputs in docs/results/.

The cog blocks of README.md and docs/*.md import this module (`make docs` runs `cog -r` over them; the test
suite runs `cog --check`). Every function takes a run name (a folder of docs/results/) and returns Markdown.

    python docs/render.py plots      # redraw the embedded plots from the committed CSVs and JSONs
"""

from __future__ import annotations

import csv
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
    if np.isnan(lo) or np.isnan(hi):
        return f"{r:.{digits}g}× [n/a]"
    return f"{r:.{digits}g}× [{lo:.{digits}g}, {hi:.{digits}g}]"


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
    """Every line: PPL [95 %] @ compute share (kept share) per point, and where it reaches 1.05× / 1.25× dense."""
    fr = frontier(run)
    n = max(len(g) for _, g in fr.groupby("line"))
    cross = _crossings(fr)
    rows = []
    for line, g in fr.groupby("line", sort=False):
        g = g.sort_values("compute_share")
        cells = [f"{ci(r._asdict())} @ {r.compute_share:.2f} ({r.kept_share:.2f})" for r in g.itertuples()]
        c = cross.loc[line]
        rows.append([line] + cells + [""] * (n - len(cells)) + [_cross(c, 1.05), _cross(c, 1.25)])
    return md(["line"] + [f"point {i + 1}" for i in range(n)] + ["1.05× dense at", "1.25× dense at"], rows)


def batch_table(run: str) -> str:
    """The batch view at the middle kept share: rows read by B tokens (union / grouped by cluster id)."""
    fr = frontier(run)
    sizes = sorted(int(c[len("union_b"):]) for c in fr.columns if c.startswith("union_b"))
    mid = batch_share(run)
    rows = []
    for line, g in fr.groupby("line", sort=False):
        r = g.iloc[int(np.argmin(np.abs(g.share.to_numpy(float) - mid)))]
        cells = [f"{r[f'union_b{b}']:.3f}" + ("" if pd.isna(r.get(f"grouped_b{b}")) else f" / {r[f'grouped_b{b}']:.3f}")
                 for b in sizes]
        rows.append([line, f"{r.kept_share:.2f}"] + cells)
    return md(["line", "kept"] + [f"B = {b}" for b in sizes], rows)


def batch_share(run: str) -> float:
    fr = frontier(run)
    shares = sorted(fr.loc[fr.family != "cats", "share"].unique())
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
    if pd.isna(v):
        return "–"
    if pd.isna(lo) or pd.isna(hi):
        return f"{fmt.format(v)} [n/a]"
    return f"{fmt.format(v)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def verdict_table(run: str, share: float = 0.6) -> str:
    """The short verdict: every frontier line at the compute share nearest `share`, best first, with its token
    count, perplexity, ratio to dense, KL from dense and top-1 agreement (95 % block-bootstrap intervals)."""
    rows = []
    for r in near(run, share).itertuples():
        d = r._asdict()
        row = [f"`{r.line}`", f"{r.compute_share:.2f}", f"{int(r.tokens):,}", ci(d),
               iv(r.ratio, r.ratio_lo, r.ratio_hi, "{:.2f}×")]
        if "kl" in d:
            row += [iv(r.kl, r.kl_lo, r.kl_hi), iv(r.top1, r.top1_lo, r.top1_hi, "{:.3f}")]
        rows.append(row)
    head = ["line", "compute share", "tokens", "perplexity [95 %]", "ratio to dense [95 %]"]
    if "kl" in frontier(run).columns:
        head += ["KL from dense, nats [95 %]", "top-1 agreement [95 %]"]
    return md(head, rows)


def verdict_sentence(run: str, share: float = 0.6) -> str:
    """Which line is best on FLOPs, and how the best predicted cluster line compares with it and with the neuron
    predictor of equal FLOPs (`neuron-{kind}-k{K}-x1` for `predicted-{kind}-m1.*.*-k{K}-*`)."""
    n = near(run, share)
    best = n.iloc[0]
    cross = _crossings(frontier(run))
    reach = cross["share_1.05"].dropna().sort_values()
    out = [f"At a compute share near {share:g} the best line is `{best.line}` ({ppl(best.ppl)} at "
           f"{best.compute_share:.2f}, {best.ratio:.2f}× dense)"]
    if len(reach):
        out.append(f"; the first line to reach 1.05× dense is `{reach.index[0]}`, at a compute share of "
                   f"{reach.iloc[0]:.2f}")
    preds = n[n.line.str.match(r"^predicted-\w+-m1\.")]
    if len(preds):
        pred = preds.iloc[0]
        out.append(f". The best top-1 predicted cluster line there (`{pred.line}`) is at {ppl(pred.ppl)}, "
                   f"{pred.ratio / best.ratio:.1f}× the best line's ratio to dense")
        m = re.match(r"^predicted-(\w+)-m1\..*-k(\d+)-s\d+$", pred.line)
        neuron = n[n.line == f"neuron-{m.group(1)}-k{m.group(2)}-x1"] if m else n.iloc[:0]
        if len(neuron):
            nr = neuron.iloc[0]
            verb = "beats" if pred.ppl < nr.ppl else "does not beat"
            out.append(f", and {verb} the neuron predictor of equal FLOPs (`{nr.line}`, {ppl(nr.ppl)})")
    return "".join(out) + ".\n"


def best_per_share(run: str, shares=(0.4, 0.6, 0.8)) -> str:
    """The best and the second-best line at each compute share."""
    rows = []
    for s in shares:
        n = near(run, s)
        a, b = n.iloc[0], n.iloc[1]
        rows.append([f"≈ {s:g}", f"`{a.line}` @ {a.compute_share:.2f}: {ci(a)}, {a.ratio:.2f}× dense",
                     f"`{b.line}` @ {b.compute_share:.2f}: {ci(b)}, {b.ratio:.2f}× dense"])
    return md(["compute share", "best line", "next"], rows)


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


def greedy_table(run: str, share: float = 0.6) -> str:
    """Uniform against greedy allocation, each as perplexity and ratio to dense, for the lines that have both."""
    fr = frontier(run)
    pairs = [(l, l.replace("-k", "_greedy-k")) for l in fr.line.unique() if l.startswith("oracle.") and "_greedy" not in l]
    pairs = [(a, b) for a, b in pairs if b in set(fr.line)] + ([("teal", "teal-greedy")] if "teal-greedy" in set(fr.line) else [])
    rows = []
    for a, b in pairs:
        ra, rb = _at(fr, a, share), _at(fr, b, share)
        rows.append([f"`{a}` / `{b}`", f"{ppl(ra.ppl)} ({ra.ratio:.2f}×)", f"{ppl(rb.ppl)} ({rb.ratio:.2f}×)"])
    return md(["lines (uniform / greedy)", "uniform: PPL (× dense)", "greedy: PPL (× dense)"], rows)


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


def ffn_mask_table(run: str = "kernels-h200", shares=(0.4, 0.6, 0.8)) -> str:
    """Masked FFN time over dense time, per regime and kept share."""
    regimes = [("decode, T = 1: one cluster mask (`grouped`)", "grouped", 1, 8, "uniform"),
               ("decode, T = 1: per-token mask (neuron predictor)", "per_token", 1, None, "-"),
               ("decode, T = 1: CATS", "cats", 1, None, "-"),
               ("prefill, T = 4096: grouped, K = 8 (uniform ids)", "grouped", 4096, 8, "uniform"),
               ("prefill, T = 4096: grouped, K = 32", "grouped", 4096, 32, "uniform"),
               ("prefill, T = 16384: grouped, K = 8", "grouped", 16384, 8, "uniform")]
    rows = [[name] + [f"{_fm(run, k, t, s, g, a):.2f}" for s in shares] for name, k, t, g, a in regimes]
    rows.append(["prefill, T = 4096: per-token / CATS"]
                + [f"{_fm(run, 'per_token', 4096, s):.2f} / {_fm(run, 'cats', 4096, s):.2f}" for s in shares])
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


# ---------------------------------------------------------------- plots

def draw_plots() -> list[Path]:
    """Redraw the frontier plots of every collected run (a folder with a frontier table and a dense perplexity;
    the partial runs beside them carry only tables) from those committed files."""
    from apc.results.frontier import make_frontier_plots

    out = []
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
