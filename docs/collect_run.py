"""Copy the small raw outputs of one finished run into docs/results/RUN_NAME/, for `make docs` to render.

    python docs/collect_run.py RESULTS_DIR RUN_NAME [--log SNAKEMAKE_LOG] [--command "make run"]

Reads only under RESULTS_DIR (and the Snakemake log). Writes, replacing the folder's previous collection:
config.json, summary.csv, frontier.csv, frontier_decision.csv, frontier_paired.csv (the paired comparisons),
frontier_calibration.json, thresholds.json, ppl/ (dense, sparse and cell JSONs, not the batches),
extract/{split}.json, predictors/ (test reports), jobs.csv (one row per
`benchmarks/*.tsv`: rule, wall seconds, peak RSS), du.tsv (bytes of every top-level store), dag.json (the DAG's
wall time from the log), coverage_test.csv (each neuron-expert cell's held-out coverage per router and k, from
experts/*/*/report.json), plots/ (the frontier plots) and COMMAND (the command, the commit of the checkout that holds
RESULTS_DIR, the date). A run that made the frontier but not the summary (a `frontier.csv` target) is collected too.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def _git_head(path: Path) -> str:
    out = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def jobs_table(res: Path) -> list[dict]:
    """One row per Snakemake benchmark file: rule, job (file stem), wall seconds, max RSS (MB)."""
    rows = []
    for f in sorted((res / "benchmarks").rglob("*.tsv")):
        lines = f.read_text().splitlines()
        if len(lines) < 2:
            continue
        head, vals = lines[0].split("\t"), lines[1].split("\t")
        rec = dict(zip(head, vals))
        name = f.relative_to(res / "benchmarks").as_posix()[: -len(".tsv")]
        rule = re.sub(r"-.*", "", name.split("/")[0].split(".")[0])
        rows.append({"rule": rule, "job": name, "s": rec.get("s", ""), "max_rss_mb": rec.get("max_rss", "")})
    return rows


COVERAGE_COLUMNS = ["cell", "shared_share", "n_experts", "expert_size", "router", "k", "coverage", "mass_coverage",
                    "density", "router_flops_share"]


def coverage_rows(res: Path) -> list[dict]:
    """One row per neuron-expert cell, router (and `best`, the oracle's choice) and k: the held-out coverage summed
    over layers (`report.json`'s `total`)."""
    rows = []
    for f in sorted(res.glob("experts/*/*/report.json")):
        rep = json.loads(f.read_text())
        for router, by_k in (rep.get("total") or {}).items():
            for k, v in sorted(by_k.items(), key=lambda kv: int(kv[0])):
                rows.append({"cell": f.parent.name, "shared_share": f"{rep['shared_share']:.4f}",
                             "n_experts": rep["n_experts"], "expert_size": rep["size"], "router": router, "k": int(k),
                             "coverage": f"{v['coverage']:.4f}", "mass_coverage": f"{v.get('mass_coverage', float('nan')):.4f}",
                             "density": f"{v['density']:.4f}",
                             "router_flops_share": f"{rep['router_flops_share'].get(router, 0.0):.5f}"})
    return rows


def dag_times(log: Path) -> dict:
    """First and last time stamp of a Snakemake log, the DAG's wall seconds and its last 'N of M steps'."""
    text = log.read_text()
    stamps = [dt.datetime.strptime(m, "%a %b %d %H:%M:%S %Y")
              for m in re.findall(r"^\[(\w+ \w+ +\d+ [\d:]+ \d+)\]", text, re.M)]
    steps = re.findall(r"(\d+) of (\d+) steps", text)
    out = {"log": log.name}
    if stamps:
        out.update(start=stamps[0].isoformat(), end=stamps[-1].isoformat(),
                   wall_s=(stamps[-1] - stamps[0]).total_seconds())
    if steps:
        out.update(jobs_done=int(steps[-1][0]), jobs_total=int(steps[-1][1]))
    return out


def machine() -> str:
    """Cores, memory and CPU model of this machine (the collector runs where the run ran)."""
    cpu, mem = "unknown CPU", ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"^model name\s*:\s*(.+)$", info, re.M).group(1).strip()
        kb = int(re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M).group(1))
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, AttributeError):
        pass
    return f"{os.cpu_count()} cores{mem}, {cpu}"


def dag_times_resumed(logs: list[Path]) -> dict:
    """`dag_times` of a run made in several stretches (a stopped run resumed): walls and jobs done summed."""
    parts = [dag_times(p) for p in logs]
    if len(parts) == 1:
        return parts[0]
    out = {"log": ", ".join(p["log"] for p in parts), "stretches": parts}
    if all("wall_s" in p for p in parts):
        out.update(start=parts[0]["start"], end=parts[-1]["end"], wall_s=sum(p["wall_s"] for p in parts))
    if all("jobs_done" in p for p in parts):
        out.update(jobs_done=sum(p["jobs_done"] for p in parts), jobs_total=parts[0]["jobs_total"])
    return out


def collect(res: Path, dest: Path, *, command: str, log: Path | list[Path] | None = None, note: str = "",
            commit: str | None = None, machine_line: str | None = None) -> list[Path]:
    """Replace dest with the small raw outputs of the finished run in res; return the files written."""
    if not (res / "summary.csv").exists() and not (res / "frontier.csv").exists():
        raise SystemExit(f"collect_run: {res} has neither summary.csv nor frontier.csv: the run is not finished")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("config.json", "summary.csv", "frontier.csv", "frontier_decision.csv", "frontier_paired.csv",
                 "frontier_calibration.json", "thresholds.json", "mlflow_runs.json"):
        if (res / name).exists():
            _copy(res / name, tmp / name)
    if (res / "model/manifest.json").exists():
        _copy(res / "model/manifest.json", tmp / "manifest.json")
    for p in sorted((res / "ppl").rglob("*.json")):
        if "batches" not in p.parts:
            _copy(p, tmp / "ppl" / p.relative_to(res / "ppl"))
    for p in sorted((res / "patterns").glob("*/extract.json")):
        _copy(p, tmp / "extract" / f"{p.parent.name}.json")
    for p in sorted(list(res.glob("clusters/**/*report.json")) + list(res.glob("predictors/**/*report.json"))):
        _copy(p, tmp / "predictors" / p.relative_to(res).as_posix().replace("/", "__"))
    for p in sorted(res.glob("plots/frontier*.png")) + sorted(res.glob("plots/batch_*.png")):
        _copy(p, tmp / "plots" / p.name)
    cov = coverage_rows(res)
    if cov:
        with open(tmp / "coverage_test.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COVERAGE_COLUMNS)
            w.writeheader()
            w.writerows(cov)
    rows = jobs_table(res)
    with open(tmp / "jobs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["rule", "job", "s", "max_rss_mb"])
        w.writeheader()
        w.writerows(rows)
    with open(tmp / "du.tsv", "w") as f:
        f.write("bytes\tpath\n")
        for p in sorted(res.iterdir()):
            f.write(f"{_tree_bytes(p)}\t{p.name}\n")
        for p in sorted(res.glob("patterns/*")) + sorted(res.glob("patterns/*/*")) + sorted(res.glob("ffn_inputs/*")):
            if p.is_dir():
                f.write(f"{_tree_bytes(p)}\t{p.relative_to(res).as_posix()}\n")
    logs = [] if log is None else [log] if isinstance(log, Path) else list(log)
    if logs:
        (tmp / "dag.json").write_text(json.dumps(dag_times_resumed(logs), indent=1) + "\n")
    commit = commit or _git_head(res)
    (tmp / "COMMAND").write_text(
        f"command: {command}\ncommit: {commit}\nresults: {res}\nmachine: {machine_line or machine()}\n"
        + (f"note: {note}\n" if note else "") +
        f"collected: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by "
        f"python docs/collect_run.py {res} {dest.name}" + "".join(f" --log {p}" for p in logs) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return sorted(p for p in dest.rglob("*") if p.is_file())


def latest_log(res: Path) -> Path | None:
    """The newest Snakemake log that ran jobs, of the checkout that holds res (its .snakemake/log), if any."""
    for d in [res, *res.parents]:
        logs = [p for p in sorted((d / ".snakemake" / "log").glob("*.snakemake.log")) if "steps" in p.read_text()]
        if logs:
            return logs[-1]
    return None


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results_dir", type=Path)
    ap.add_argument("run_name")
    ap.add_argument("--log", type=Path, action="append", default=None,
                    help="Snakemake log (default: the checkout's newest); repeat it for a run resumed after a stop")
    ap.add_argument("--machine", default=None, help="the machine that made the run (default: this one)")
    ap.add_argument("--commit", default=None, help="the commit that made the run (default: the checkout's HEAD)")
    ap.add_argument("--command", default="make run", help="the command that made the run")
    ap.add_argument("--note", default="", help="one line on how the run was made (e.g. a machine shared with other work)")
    a = ap.parse_args(argv)
    res = a.results_dir.resolve()
    log = a.log or latest_log(res)
    files = collect(res, DOCS / "results" / a.run_name, command=a.command, log=log, note=a.note, commit=a.commit,
                    machine_line=a.machine)
    print(f"{len(files)} files in docs/results/{a.run_name} (log: {log})", file=sys.stderr)


if __name__ == "__main__":
    main()
