"""Print the README's result tables (Markdown) from one finished results folder.

    .venv/bin/python docs/readme_tables.py results/default [.snakemake/log/<run>.snakemake.log]

Reads `summary.csv`, `ppl/**.json`, `frontier.csv` and `benchmarks/*.tsv` of the folder; with a
Snakemake log it also prints the DAG's wall time.  Every perplexity comes with its token count and
95 % block-bootstrap interval ("n/a" below 20 blocks); ratios are paired on the tokens both results scored.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from apc.perplexity.intervals import BLOCK_TOKENS, fmt_interval, ppl_ratio  # noqa: E402


def ppl(x: float) -> str:
    if pd.isna(x):
        return "–"
    return f"{x:.2f}" if x < 100 else f"{x:.1f}" if x < 1000 else f"{x:.3g}"


def ci(d: dict) -> str:
    if pd.isna(d.get("ppl_lo")) or pd.isna(d.get("ppl_hi")):
        return f"{ppl(d['ppl'])} [n/a]"
    return f"{ppl(d['ppl'])} [{ppl(d['ppl_lo'])}, {ppl(d['ppl_hi'])}]"


def ratio(m: dict, ref: dict) -> str:
    n = min(len(m["token_nll"]), len(ref["token_nll"]))
    r, lo, hi = ppl_ratio(m["token_nll"][:n], ref["token_nll"][:n], block=int(m.get("block_tokens", BLOCK_TOKENS)))
    return fmt_interval(r, lo, hi)


def gate_table(s: pd.DataFrame) -> None:
    print("Clustering, held out (gate): test recall / precision / centroid density (train − test recall gap)\n")
    g = s[s.projection == "gate"]
    rows = []
    for (scope, method), grp in g.groupby(["scope", "method"], sort=False):
        cells = {}
        for k, gk in grp.groupby("k"):
            te = gk[gk.split == "test"].iloc[0]
            tr = gk[gk.split == "train"]
            gap = "" if method == "random" or tr.empty else f" ({tr.iloc[0].recall - te.recall:+.3f})"
            cells[int(k)] = f"{te.recall:.3f} / {te.precision:.3f} / {te.centroid_density:.2f}{gap}"
        rows.append((scope, method, cells))
    ks = sorted({k for _, _, c in rows for k in c})
    print("| scope, method | " + " | ".join(f"K = {k}" for k in ks) + " |")
    print("| --- |" + " --- |" * len(ks))
    for scope, method, c in rows:
        print(f"| {scope.replace('_', '-')} {method} | " + " | ".join(c.get(k, "") for k in ks) + " |")


def ppl_tables(out: Path, s: pd.DataFrame) -> None:
    dense = json.loads((out / "ppl/dense.json").read_text())
    print(f"\ndense: {ci(dense)}, {dense['tokens']} tokens in {dense['windows']} windows")
    for sp_path in sorted((out / "ppl").glob("sparse-*.json")):
        pset = sp_path.stem[len("sparse-"):]
        sp = json.loads(sp_path.read_text())
        kept = {q: round(v, 3) for q, v in sp["kept"].items()}
        print(f"\n{pset}: true sparse {ci(sp)} (ratio to dense {ratio(sp, dense)}), kept {kept}\n")
        print("| cell | recall / mass_recall (test) | mode | PPL [95 %] | ratio to true sparse [95 %] | kept |")
        print("| --- | --- | --- | --- | --- | --- |")
        for p in sorted(q for q in (out / "ppl" / pset).glob("*/*.json") if q.parent.name != "batches"):
            d = json.loads(p.read_text())
            rows = s[(s.split == "test") & (s.scope == d["scope"]) & (s.method == d["method"]) & (s.k == d["k"])
                     & (s.density == d["density"]) & (s.projection.isin(d["projections"]))]
            mass = rows.mass_recall.mean() if "mass_recall" in rows else float("nan")
            cov = f"{rows.recall.mean():.3f}" + ("" if pd.isna(mass) else f" / {mass:.3f}")
            for mode, m in d["modes"].items():
                kept = np.mean(list(m["kept"].values()))
                print(f"| {d['scope']} {d['method']} K = {d['k']} | {cov} | {mode} | {ci(m)} | {ratio(m, sp)} | "
                      f"{kept:.2f} |")
        print(f"\n({dense['tokens']} tokens in {dense['windows']} windows per result)")


def _cross(row, name: str) -> str:
    v, lo, hi = row[name], row[f"{name}_lo"], row[f"{name}_hi"]
    if pd.isna(v):
        return "not reached" + (f" (interval from {lo:.2f})" if not pd.isna(lo) else "")
    if pd.isna(lo) and pd.isna(hi):
        return f"{v:.2f} [n/a]"
    return f"{v:.2f} [{lo:.2f}, " + ("not reached" if pd.isna(hi) else f"{hi:.2f}") + "]"


def frontier_table(out: Path) -> None:
    from apc.results.frontier import crossings

    path = out / "frontier.csv"
    if not path.exists():
        return
    fr = pd.read_csv(path)
    has_kl = "kl" in fr and fr.kl.notna().any()
    print("\nFrontier on the real compute axis: PPL [95 %]" + (" · KL from dense, nats [95 %] · top-1 agreement [95 %]"
                                                               if has_kl else "") + " @ compute share (kept share)\n")
    n = max(len(g) for _, g in fr.groupby("line"))
    levels = [("share_1.05", "1.05× dense"), ("share_1.25", "1.25× dense")]
    levels += [("share_kl0.05", "KL 0.05"), ("share_kl0.2", "KL 0.2")] if has_kl else []
    print("| line | " + " | ".join(f"point {i + 1}" for i in range(n)) + " | "
          + " | ".join(f"{t} at" for _, t in levels) + " |")
    print("| --- |" + " --- |" * (n + len(levels)))
    cross = crossings(fr).set_index("line")
    for line, g in fr.groupby("line", sort=False):
        g = g.sort_values("compute_share")
        cells = [ci(r._asdict()) + (f" · {fmt_interval(r.kl, r.kl_lo, r.kl_hi)} · {fmt_interval(r.top1, r.top1_lo, r.top1_hi)}"
                                    if has_kl else "") + f" @ {r.compute_share:.2f} ({r.kept_share:.2f})"
                 for r in g.itertuples()]
        c = cross.loc[line]
        print(f"| {line} | " + " | ".join(cells + [""] * (n - len(cells))) + " | "
              + " | ".join(_cross(c, name) for name, _ in levels) + " |")
    units = f", {int(fr.units.iloc[0])} blocks" if "units" in fr and fr.units.notna().any() else ""
    print(f"\n({int(fr.tokens.iloc[0])} tokens in {int(fr.windows.iloc[0])} windows per point{units}; crossing shares "
          "interpolated linearly between a line's points, [from the interval's lower, upper bound])")
    sizes = sorted(int(c[len("union_b"):]) for c in fr.columns if c.startswith("union_b"))
    if sizes:
        shares = sorted(fr.loc[fr.family != "cats", "share"].unique())
        mid = shares[len(shares) // 2]
        print(f"\nBatch view at kept share ≈ {mid:g}: share of down_in rows read by B consecutive tokens, "
              "union of their masks / grouped by cluster id\n")
        print("| line | kept | " + " | ".join(f"B = {b}" for b in sizes) + " |")
        print("| --- | --- |" + " --- |" * len(sizes))
        for line, g in fr.groupby("line", sort=False):
            r = g.iloc[int(np.argmin(np.abs(g.share.to_numpy(float) - mid)))]
            cells = [f"{r[f'union_b{b}']:.3f}" + ("" if pd.isna(r.get(f"grouped_b{b}")) else f" / {r[f'grouped_b{b}']:.3f}")
                     for b in sizes]
            print(f"| {line} | {r.kept_share:.2f} | " + " | ".join(cells) + " |")


def job_seconds(out: Path) -> None:
    per = defaultdict(list)
    for f in (out / "benchmarks").rglob("*.tsv"):
        rule = f.relative_to(out / "benchmarks").parts[0].split(".")[0]
        rule = re.sub(r"-.*", "", rule)
        row = f.read_text().splitlines()[1].split("\t")
        per[rule].append((float(row[0]), float(row[2]) if row[2] != "NA" else float("nan")))
    print("\nJob time per rule (benchmarks/*.tsv: Snakemake's wall time and peak RSS per job)\n")
    print("| rule | jobs | job-seconds | max peak RSS (MB) |")
    print("| --- | --- | --- | --- |")
    for rule, v in sorted(per.items(), key=lambda kv: -sum(x for x, _ in kv[1])):
        print(f"| {rule} | {len(v)} | {sum(x for x, _ in v):.0f} | {np.nanmax([m for _, m in v]):.0f} |")
    print(f"| all | {sum(len(v) for v in per.values())} | {sum(x for v in per.values() for x, _ in v):.0f} | |")


def dag_wall(log: Path) -> None:
    stamps = [dt.datetime.strptime(m, "%a %b %d %H:%M:%S %Y")
              for m in re.findall(r"^\[(\w+ \w+ +\d+ [\d:]+ \d+)\]", log.read_text(), re.M)]
    done = re.findall(r"(\d+) of (\d+) steps", log.read_text())
    done = done[-1] if done else None
    print(f"\nDAG wall time {(stamps[-1] - stamps[0]).total_seconds():.0f} s"
          + (f", {done[0]} of {done[1]} jobs" if done else ""))


def main(argv: list[str]) -> None:
    out = Path(argv[0])
    s = pd.read_csv(out / "summary.csv")
    gate_table(s)
    ppl_tables(out, s)
    frontier_table(out)
    job_seconds(out)
    if len(argv) > 1:
        dag_wall(Path(argv[1]))


if __name__ == "__main__":
    main(sys.argv[1:])
