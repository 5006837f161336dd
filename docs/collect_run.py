"""Copy the small raw outputs of one finished run into docs/results/RUN_NAME/, for `make docs` to render.

    python docs/collect_run.py RESULTS_DIR RUN_NAME [--log SNAKEMAKE_LOG] [--command "make run"]

Reads only under RESULTS_DIR (and the Snakemake log). Writes, replacing the folder's previous collection:
config.json, summary.csv, frontier.csv, frontier_calibration.json, thresholds.json, ppl/ (dense, sparse and
cell JSONs, not the batches), extract/{split}.json, predictors/ (test reports), jobs.csv (one row per
`benchmarks/*.tsv`: rule, wall seconds, peak RSS), du.tsv (bytes of every top-level store), dag.json (the DAG's
wall time from the log) and COMMAND (the command, the commit of the checkout that holds RESULTS_DIR, the date).
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


def collect(res: Path, dest: Path, *, command: str, log: Path | None = None, note: str = "") -> list[Path]:
    """Replace dest with the small raw outputs of the finished run in res; return the files written."""
    if not (res / "summary.csv").exists():
        raise SystemExit(f"collect_run: {res} has no summary.csv: the run is not finished")
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("config.json", "summary.csv", "frontier.csv", "frontier_calibration.json", "thresholds.json",
                 "mlflow_runs.json"):
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
    if log is not None:
        (tmp / "dag.json").write_text(json.dumps(dag_times(log), indent=1) + "\n")
    commit = _git_head(res)
    (tmp / "COMMAND").write_text(
        f"command: {command}\ncommit: {commit}\nresults: {res}\nmachine: {machine()}\n"
        + (f"note: {note}\n" if note else "") +
        f"collected: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by "
        f"python docs/collect_run.py {res} {dest.name}" + (f" --log {log}" if log else "") + "\n")
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
    ap.add_argument("--log", type=Path, default=None, help="Snakemake log (default: the checkout's newest)")
    ap.add_argument("--command", default="make run", help="the command that made the run")
    ap.add_argument("--note", default="", help="one line on how the run was made (e.g. a machine shared with other work)")
    a = ap.parse_args(argv)
    res = a.results_dir.resolve()
    log = a.log or latest_log(res)
    files = collect(res, DOCS / "results" / a.run_name, command=a.command, log=log, note=a.note)
    print(f"{len(files)} files in docs/results/{a.run_name} (log: {log})", file=sys.stderr)


if __name__ == "__main__":
    main()
