"""Per-rule cost of a finished (or partly finished) workflow run, its extrapolation, and a check of the requests.

    python benchmarks/rule_report.py --outdir results/paper-shaped \
        --snakemake-log .snakemake/log/<run>.snakemake.log \
        --target-jobs docs/paper_shaped_target_jobs.json --markdown report.md

Reads, per job: wall seconds and peak RSS (Snakemake's ``benchmarks/*.tsv``), peak CUDA memory
(the ``peak CUDA memory allocated: N bytes`` line every rule script logs at exit), the bytes of
its outputs, and its requests (``resources:`` of the Snakemake log: ``mem_mb``, ``runtime``,
``gpu``).  Prints one row per rule, then the request check: every request should be at least
1.5x and at most 4x the measured use (``runtime`` is in whole minutes, with the workflow's
floor, so jobs of seconds are reported but not held to the upper bound).

``--target-jobs`` (a JSON of ``{"rules": {rule: job count}, "scale": {rule: factor}}`` for the
study to extrapolate to, made by :func:`target_jobs`) turns the measured mean seconds per job
into the study's GPU-hours: rule seconds = jobs x mean seconds x factor.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import defaultdict
from pathlib import Path

_PEAK = re.compile(r"peak CUDA memory allocated: (\d+) bytes")
#: Rules that run on the GPU when the workflow does (their requests carry ``gpu``).
_RES = re.compile(r"(\w+)=([^,\s]+)")


def parse_snakemake_log(path: str | Path) -> list[dict]:
    """Jobs of a Snakemake log: ``{rule, log, benchmark, output: [paths], resources: {key: value}}``."""
    jobs, cur = [], None
    for raw in Path(path).read_text(errors="replace").splitlines():
        m = re.match(r"^(?:local)?rule (\w+):$", raw.strip())
        if m and not raw.startswith(" "):
            cur = {"rule": m.group(1), "output": [], "resources": {}}
            jobs.append(cur)
            continue
        if cur is None or not raw.startswith("    "):
            continue
        key, _, val = raw.strip().partition(": ")
        if key == "log":
            cur["log"] = val.split(" (")[0].split(", ")[0]
        elif key == "benchmark":
            cur["benchmark"] = val
        elif key == "output":
            cur["output"] = [v for v in val.split(", ") if v]
        elif key == "resources":
            cur["resources"] = {k: _num(v) for k, v in _RES.findall(val)}
    return [j for j in jobs if "benchmark" in j]


def _num(v: str):
    try:
        return float(v)
    except ValueError:
        return v


def _bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        total += sum((Path(root) / f).stat().st_size for f in files if (Path(root) / f).exists())
    return total


def measure(jobs: list[dict]) -> list[dict]:
    """Add ``seconds``, ``rss_mb``, ``cuda_bytes`` and ``disk_bytes`` to every job whose benchmark exists."""
    out = []
    for j in jobs:
        bench = Path(j["benchmark"])
        if not bench.exists():
            continue
        head, row = bench.read_text().splitlines()[:2]
        rec = dict(zip(head.split("\t"), row.split("\t")))
        log = Path(j.get("log", ""))
        peaks = _PEAK.findall(log.read_text(errors="replace")) if log.is_file() else []
        out.append({**j, "seconds": float(rec["s"]), "rss_mb": _float(rec.get("max_rss")),
                    "cuda_bytes": int(peaks[-1]) if peaks else None,
                    "disk_bytes": sum(_bytes(Path(p)) for p in j["output"] if Path(p).exists())})
    return out


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def per_rule(jobs: list[dict]) -> dict[str, dict]:
    """Per rule: jobs, total and mean seconds, peaks of RSS and CUDA memory, disk, request ratios."""
    rules: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "seconds": 0.0, "max_seconds": 0.0, "rss_mb": 0.0,
                                                  "cuda_bytes": 0, "disk_bytes": 0, "gpu": 0,
                                                  "mem_ratio": [], "runtime_ratio": []})
    for j in jobs:
        r = rules[j["rule"]]
        r["jobs"] += 1
        r["seconds"] += j["seconds"]
        r["max_seconds"] = max(r["max_seconds"], j["seconds"])
        r["rss_mb"] = max(r["rss_mb"], j["rss_mb"] or 0)
        r["cuda_bytes"] = max(r["cuda_bytes"], j["cuda_bytes"] or 0)
        r["disk_bytes"] += j["disk_bytes"]
        res = j["resources"]
        r["gpu"] = max(r["gpu"], int(res.get("gpu", 0) or 0))
        if j["rss_mb"] and "mem_mb" in res:
            r["mem_ratio"].append(res["mem_mb"] / j["rss_mb"])
        if "runtime" in res and j["seconds"] > 0:
            r["runtime_ratio"].append(res["runtime"] * 60 / j["seconds"])
    for r in rules.values():
        r["mean_seconds"] = r["seconds"] / max(1, r["jobs"])
    return dict(rules)


def check_requests(rules: dict[str, dict], low: float = 1.5, high: float = 4.0, min_seconds: float = 60.0) -> list[str]:
    """One line per request outside ``[low, high]`` x the measured use (runtime's upper bound only for
    jobs of at least ``min_seconds``)."""
    bad = []
    for name, r in sorted(rules.items()):
        if r["mem_ratio"] and (min(r["mem_ratio"]) < low or max(r["mem_ratio"]) > high):
            bad.append(f"{name}: mem_mb is {min(r['mem_ratio']):.2f}x to {max(r['mem_ratio']):.2f}x the peak RSS")
        if r["runtime_ratio"]:
            lo = min(r["runtime_ratio"])
            if lo < low or (r["max_seconds"] >= min_seconds and max(r["runtime_ratio"]) > high):
                bad.append(f"{name}: runtime is {lo:.1f}x to {max(r['runtime_ratio']):.1f}x the wall time")
    return bad


def markdown(rules: dict[str, dict], target: dict | None = None) -> str:
    """The per-rule table (and, with ``target``, the extrapolated seconds and GPU-hours)."""
    lines = ["| rule | jobs | GPU | total s | mean s | max s | peak GPU GiB | peak RSS GiB | disk GB "
             "| mem_mb / RSS | runtime / wall |",
             "| --- | ---: | :---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for name, r in sorted(rules.items(), key=lambda kv: -kv[1]["seconds"]):
        ratio = lambda xs: f"{min(xs):.1f}-{max(xs):.1f}" if xs else "-"  # noqa: E731
        lines.append(f"| {name} | {r['jobs']} | {'yes' if r['gpu'] else 'no'} | {r['seconds']:.1f} | "
                     f"{r['mean_seconds']:.1f} | {r['max_seconds']:.1f} | "
                     f"{r['cuda_bytes'] / 2**30:.2f} | {r['rss_mb'] / 1024:.2f} | {r['disk_bytes'] / 1e9:.3f} | "
                     f"{ratio(r['mem_ratio'])} | {ratio(r['runtime_ratio'])} |")
    if target:
        lines += ["", "| rule | measured mean s | study jobs | scale | study GPU-hours |", "| --- | ---: | ---: | ---: | ---: |"]
        total = 0.0
        for name, n in sorted(target["rules"].items()):
            r = rules.get(name)
            if r is None or not r["gpu"]:
                continue
            scale = target["scale"].get(name, 1.0)
            hours = n * r["mean_seconds"] * scale / 3600
            total += hours
            lines.append(f"| {name} | {r['mean_seconds']:.1f} | {n} | {scale:.2f} | {hours:.2f} |")
        lines.append(f"| **all GPU rules** | | | | **{total:.1f}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snakemake-log", required=True, help="the run's .snakemake/log/*.snakemake.log")
    ap.add_argument("--root", default=".", help="folder the log's relative paths start from")
    ap.add_argument("--target-jobs", help="JSON {rules: {rule: jobs}, scale: {rule: factor}} to extrapolate to")
    ap.add_argument("--markdown", help="also write the tables here")
    ap.add_argument("--json", help="also write the per-rule numbers here")
    args = ap.parse_args(argv)
    os.chdir(args.root)
    rules = per_rule(measure(parse_snakemake_log(args.snakemake_log)))
    target = json.loads(Path(args.target_jobs).read_text()) if args.target_jobs else None
    text = markdown(rules, target)
    bad = check_requests(rules)
    text += "\n\nRequests outside 1.5x-4x of the measured use:\n" + ("\n".join(f"- {b}" for b in bad) or "- none")
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rules, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
