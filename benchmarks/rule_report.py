"""Per-rule cost of a finished (or partly finished) workflow run, its extrapolation, and a check of the requests.

    python benchmarks/rule_report.py --outdir results/paper-shaped \
        --snakemake-log .snakemake/log/<run>.snakemake.log \
        --target-dryrun mistral-dryrun.txt --target-preset mistral7b-wikitext2 --scale 8 --markdown report.md

Reads, per job: wall seconds (Snakemake's ``benchmarks/*.tsv``), peak host RSS (the job's own ``peak host RSS: N
bytes`` line, else the benchmark's sampled ``max_rss``), peak CUDA memory
(the ``peak CUDA memory allocated: N bytes`` line every rule script logs at exit), the bytes of
its outputs, and its requests (``resources:`` of the Snakemake log: ``mem_mb``, ``runtime``,
``gpu``).  Prints one row per rule, then the request check: every request should be at least
1.5x and at most 4x the measured use (``runtime`` is in whole minutes, with the workflow's
floor, so jobs of seconds are reported but not held to the upper bound).

``--target-dryrun`` (the ``snakemake -n`` output of the study to extrapolate to) and
``--target-preset`` turn the measured seconds into the study's GPU-hours (:func:`extrapolate`):
per GPU rule, its job count there times the measured mean seconds per job times ``--scale``
(or a ``--scale-rule`` of its own); clustering and evaluation from a fit of seconds against K
over the measured jobs, summed over the study's cells.
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
_RSS = re.compile(r"peak host RSS: (\d+) bytes")
SAMPLE_SECONDS = 30.0  # Snakemake's benchmark samples RSS this often
MIN_SECONDS = 60.0  # jobs shorter than this are not held to the runtime's upper bound (whole minutes, a floor)
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
        elif key == "wildcards":
            cur["wildcards"] = dict(_RES.findall(val))
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
        text = log.read_text(errors="replace") if log.is_file() else ""
        peaks, rss = _PEAK.findall(text), _RSS.findall(text)
        # the job's own getrusage peak where it logged one; else Snakemake's sampled max_rss (every 30 s,
        # so a job of seconds may be sampled once, early)
        rss_mb = int(rss[-1]) / 2**20 if rss else _float(rec.get("max_rss"))
        out.append({**j, "seconds": float(rec["s"]), "rss_mb": rss_mb, "rss_exact": bool(rss),
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
                                                  "mem_ratio": [], "runtime_ratio": [], "long_runtime_ratio": []})
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
        # a sampled RSS (every 30 s) of a shorter job is not its peak: such jobs are shown, not checked
        if j["rss_mb"] and "mem_mb" in res and (j.get("rss_exact") or j["seconds"] >= SAMPLE_SECONDS):
            r["mem_ratio"].append(res["mem_mb"] / j["rss_mb"])
        if "runtime" in res and j["seconds"] > 0:
            r["runtime_ratio"].append(res["runtime"] * 60 / j["seconds"])
            if j["seconds"] >= MIN_SECONDS:  # the upper bound holds for jobs of a minute or more
                r["long_runtime_ratio"].append(res["runtime"] * 60 / j["seconds"])
    for r in rules.values():
        r["mean_seconds"] = r["seconds"] / max(1, r["jobs"])
    return dict(rules)


def check_requests(rules: dict[str, dict], low: float = 1.5, high: float = 4.0) -> list[str]:
    """One line per request outside ``[low, high]`` x the measured use (runtime's upper bound only for
    jobs of at least ``MIN_SECONDS``; memory only where the peak RSS is measured, see :func:`per_rule`)."""
    bad = []
    for name, r in sorted(rules.items()):
        if r["mem_ratio"] and (min(r["mem_ratio"]) < low or max(r["mem_ratio"]) > high):
            bad.append(f"{name}: mem_mb is {min(r['mem_ratio']):.2f}x to {max(r['mem_ratio']):.2f}x the peak RSS")
        if r["runtime_ratio"]:
            lo, long = min(r["runtime_ratio"]), r["long_runtime_ratio"]
            if lo < low or (long and max(long) > high):
                top = max(long) if long and max(long) > high else max(r["runtime_ratio"])
                bad.append(f"{name}: runtime is {lo:.1f}x to {top:.1f}x the wall time")
    return bad


def dryrun_counts(text: str) -> dict[str, int]:
    """``{rule: jobs}`` from the ``Job stats`` table of ``snakemake -n`` output."""
    counts: dict[str, int] = {}
    for line in text.split("Job stats:")[-1].splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def k_fit(jobs: list[dict], rule: str) -> tuple[float, float] | None:
    """Least-squares ``seconds = a + b * K`` over the measured jobs of ``rule`` (None below two K values)."""
    pts = [(float(j["wildcards"]["k"]), j["seconds"]) for j in jobs
           if j["rule"] == rule and "k" in (j.get("wildcards") or {})]
    if len({k for k, _ in pts}) < 2:
        return None
    n = len(pts)
    mk, ms = sum(k for k, _ in pts) / n, sum(t for _, t in pts) / n
    b = sum((k - mk) * (t - ms) for k, t in pts) / sum((k - mk) ** 2 for k, _ in pts)
    return ms - b * mk, b


def extrapolate(jobs: list[dict], rules: dict[str, dict], counts: dict[str, int], target_ks: list[int],
                scale: dict[str, float], default_scale: float, test_ratio: float = 1.0) -> list[dict]:
    """Study seconds per GPU rule: ``jobs x mean seconds x scale``; for ``cluster`` and ``evaluate``,
    ``sum over the study's cells of (a + b K) x scale`` (:func:`k_fit`) when two K values were measured.
    A job on the test split (wildcard ``split=test``) counts ``test_ratio`` times its seconds (the
    study's test split against the measured one)."""
    rows = []
    for name, n in sorted(counts.items()):
        r = rules.get(name)
        if r is None or not r["gpu"]:
            continue
        f = scale.get(name, default_scale)
        fit = k_fit(jobs, name) if name in ("cluster", "evaluate") else None
        mine = [j for j in jobs if j["rule"] == name]
        split_scaled = any((j.get("wildcards") or {}).get("split") == "test" for j in mine)
        mean = sum(j["seconds"] * (test_ratio if (j.get("wildcards") or {}).get("split") == "test" else 1.0)
                   for j in mine) / max(1, len(mine))
        if fit is not None and target_ks:
            a, b = fit
            secs = sum(max(0.0, a + b * k) for k in target_ks) * f
            how = f"sum of ({a:.1f} + {b * 1000:.3f} K / 1000) s over {len(target_ks)} cells"
        else:
            secs = n * mean * f
            how = f"{n} x {mean:.1f} s" + (f" (test jobs x {test_ratio:.2f})" if split_scaled else "")
        rows.append({"rule": name, "jobs": n, "scale": f, "seconds": secs, "how": how})
    return rows


def markdown(rules: dict[str, dict], target: list[dict] | None = None) -> str:
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
        lines += ["", "| rule | study jobs | from the measured jobs | scale | study GPU-hours |",
                  "| --- | ---: | --- | ---: | ---: |"]
        for t in target:
            lines.append(f"| {t['rule']} | {t['jobs']} | {t['how']} | {t['scale']:.2f} | {t['seconds'] / 3600:.2f} |")
        lines.append(f"| **all GPU rules** | {sum(t['jobs'] for t in target)} | | | "
                     f"**{sum(t['seconds'] for t in target) / 3600:.2f}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--snakemake-log", required=True, help="the run's .snakemake/log/*.snakemake.log")
    ap.add_argument("--root", default=".", help="folder the log's relative paths start from")
    ap.add_argument("--target-dryrun", help="`snakemake -n` output of the study to extrapolate to (its Job stats)")
    ap.add_argument("--target-preset", help="that study's preset in config.yaml (its cells' K values)")
    ap.add_argument("--configfile", default="config.yaml")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="factor from a measured job to the study's (e.g. 8 for 4 -> 32 layers)")
    ap.add_argument("--test-ratio", type=float, default=1.0,
                    help="the study's test tokens over the measured run's, for jobs on the test split")
    ap.add_argument("--scale-rule", action="append", default=[], metavar="RULE=FACTOR",
                    help="another factor for one rule (e.g. perplexity_batch=28 for 8x layers, 3.5x tokens)")
    ap.add_argument("--markdown", help="also write the tables here")
    ap.add_argument("--json", help="also write the per-rule numbers here")
    args = ap.parse_args(argv)
    ks = _target_ks(args.configfile, args.target_preset) if args.target_preset else []
    log_path, dry = Path(args.snakemake_log).resolve(), Path(args.target_dryrun).resolve() if args.target_dryrun else None
    os.chdir(args.root)
    jobs = measure(parse_snakemake_log(log_path))
    rules = per_rule(jobs)
    target = None
    if dry is not None:
        scale = {k: float(v) for k, v in (item.split("=") for item in args.scale_rule)}
        target = extrapolate(jobs, rules, dryrun_counts(dry.read_text()), ks, scale, args.scale, args.test_ratio)
    text = markdown(rules, target)
    bad = check_requests(rules)
    text += "\n\nRequests outside 1.5x-4x of the measured use:\n" + ("\n".join(f"- {b}" for b in bad) or "- none")
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(rules, indent=1))
    return 0


def _target_ks(configfile: str, preset: str) -> list[int]:
    """Rows per centroid set (K, or G x K for a product cell) of every clustering cell of ``preset``."""
    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from apc.common.methods import method_spec
    from apc.common.config import resolve
    from apc.common.sweep import cluster_cells

    raw = yaml.safe_load(Path(configfile).read_text())
    c = resolve({**raw, "preset": preset}, root=Path(configfile).resolve().parent)
    out = []
    for cell in cluster_cells(c):
        base, opts = method_spec(cell.method, c["cluster"]["options"])
        out.append(int(cell.k) * (int(opts.get("groups", 2)) if base == "apc_product" else 1))
    return out


if __name__ == "__main__":
    sys.exit(main())
