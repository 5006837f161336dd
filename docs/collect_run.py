"""Copy the small raw outputs of one finished run into docs/results/RUN_NAME/, for `make docs` to render.

    python docs/collect_run.py RESULTS_DIR RUN_NAME [--log SNAKEMAKE_LOG] [--command "make run"]

Reads only under RESULTS_DIR (and the Snakemake log). Writes, replacing the folder's previous collection:
config.json, summary.csv, frontier.csv, frontier_decision.csv, frontier_paired.csv (the paired comparisons),
cell_allocation.json, calibration/ (each line's calibration table without its arrays, JSON), thresholds.json, ppl/ (dense, sparse and cell JSONs, not the batches),
extract/{split}.json, predictors/ (test reports), jobs.csv (one row per
`benchmarks/*.tsv`: rule, wall seconds, peak RSS), du.tsv (bytes of every top-level store), dag.json (the DAG's
wall time from the log), coverage_test.csv (each neuron-expert cell's held-out coverage per router and k, from
experts/*/*/report.json), plots/ (the frontier plots), COMMAND (the command, the commit of the checkout that holds
RESULTS_DIR, the date) and PROVENANCE.json (below). A run that made the frontier but not the summary (a
`frontier.csv` target) is collected too.

PROVENANCE.json, the folder's manifest, is written by the machine: the code's commit (full hash), whether that
checkout's tree had uncommitted changes (`dirty`: true, false, or null where it was not recorded), the command, the
machine, the date, and the sha256 of every other file in the folder. `--compare-to OTHER` (a folder, or
`COMMIT:PATH` of a folder in git) records, per file, whether it is identical to OTHER's file of that name; for a CSV
that differs with the same header and row count, how many rows differ in each column. A manifest for a folder
collected some other way (its commit known):

    python docs/collect_run.py --manifest-only docs/results/RUN --commit SHA --command "..." --machine "..." \
        [--dirty true|false] [--part GLOB SHA COMMAND] [--compare-to OTHER]

`--part` names files of the folder made at another commit or by another command (repeatable; the first part whose
glob matches a file holds it). `check_manifest(folder)` lists what no longer matches a folder's manifest.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import fnmatch
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT / "src"))

from apc.common.atomic import write_json  # noqa: E402
from apc.lines.store import calibration_summary  # noqa: E402

#: the machine-written manifest of a docs/results/<run>/ folder (not "MANIFEST.json": a run's folder holds the model's
#: manifest.json, and the two names are one file on a case-insensitive file system)
MANIFEST = "PROVENANCE.json"


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True)


def git_state(path: Path) -> tuple[str, bool | None]:
    """The HEAD commit of the checkout that holds path and whether its tree has uncommitted changes (tracked files
    changed, or files neither tracked nor ignored) outside docs/results/ (the collected outputs) and .venv (the
    environment, a symlink in some checkouts, which `/.venv/` does not ignore); ("unknown", None) outside a git
    checkout."""
    head = _git(path, "rev-parse", "HEAD")
    if head.returncode != 0:
        return "unknown", None
    status = _git(path, "status", "--porcelain", "--", ":(top)", ":(top,exclude)docs/results",
                  ":(top,exclude).venv")
    return head.stdout.decode().strip(), bool(status.stdout.strip()) if status.returncode == 0 else None


def full_commit(commit: str, repo: Path = ROOT) -> str:
    """The full hash of a commit named by a prefix or ref in repo; one clear error when git does not know it."""
    r = _git(repo, "rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}")
    if r.returncode != 0:
        raise SystemExit(f"collect_run: commit {commit!r} is not in the git history of {repo}")
    return r.stdout.decode().strip()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def raw_files(folder: Path) -> dict[str, bytes]:
    """Every file of a run's folder but its manifest, by path relative to the folder (POSIX), sorted."""
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST}


def _files_of(other: str, repo: Path) -> dict[str, bytes]:
    """The files of OTHER: a folder on disk, or COMMIT:PATH, a folder in repo's history (its manifest left out)."""
    if Path(other).is_dir():
        return raw_files(Path(other))
    commit, sep, folder = other.partition(":")
    if not sep:
        raise SystemExit(f"collect_run: --compare-to {other!r} is neither a folder nor COMMIT:PATH")
    folder = folder.strip("/")
    ls = _git(repo, "ls-tree", "-r", "--full-tree", "--name-only", full_commit(commit, repo), "--", folder)
    names = [n for n in ls.stdout.decode().splitlines() if n]
    if ls.returncode != 0 or not names:
        raise SystemExit(f"collect_run: --compare-to {other!r}: no files under {folder} at {commit}")
    out = {}
    for n in names:
        rel = n[len(folder) + 1:]
        if rel != MANIFEST:
            out[rel] = _git(repo, "show", f"{commit}:{n}").stdout
    return out


def csv_difference(a: bytes, b: bytes) -> dict | None:
    """Of two CSV files with one header and the same number of rows (`#` comment lines left out): rows compared,
    rows that differ, and per column the number of rows whose cell text differs; None when the headers or row
    counts differ."""
    def rows(data: bytes) -> list[list[str]]:
        text = "".join(ln for ln in data.decode(errors="replace").splitlines(True) if not ln.startswith("#"))
        return list(csv.reader(io.StringIO(text)))

    ra, rb = rows(a), rows(b)
    if not ra or not rb or ra[0] != rb[0] or len(ra) != len(rb):
        return None
    head, rows = ra[0], list(zip(ra[1:], rb[1:]))
    cols = {c: sum(x[i] != y[i] for x, y in rows) for i, c in enumerate(head)}
    return {"rows": len(rows), "rows_differing": sum(x != y for x, y in rows),
            "columns_differing": {c: k for c, k in cols.items() if k}}


def compare(folder: Path, other: str, repo: Path = ROOT) -> dict:
    """Each file of folder (and of OTHER) against OTHER's file of that name: identical, different, only_here or
    only_there; a differing CSV also gets `csv_difference`."""
    here, there = raw_files(folder), _files_of(other, repo)
    files = {}
    for rel in sorted(set(here) | set(there)):
        if rel not in there:
            files[rel] = {"status": "only_here"}
        elif rel not in here:
            files[rel] = {"status": "only_there"}
        elif here[rel] == there[rel]:
            files[rel] = {"status": "identical"}
        else:
            files[rel] = {"status": "different"}
            d = csv_difference(here[rel], there[rel]) if rel.endswith(".csv") else None
            if d is not None:
                files[rel].update(d)
    return {"to": other, "files": files}


def write_manifest(folder: Path, *, commit: str, dirty: bool | None, command: str, machine_line: str,
                   collected_by: str, note: str = "", parts: list[dict] | None = None,
                   compare_to: list[str] | None = None, history: bool = False, repo: Path = ROOT) -> dict:
    """Write folder/PROVENANCE.json (atomically) from the folder's files as they are now; return it.

    commit: the code's commit (a prefix is resolved to the full hash in repo; "unknown" is refused). parts: dicts
    with `files` (globs), `commit`, `command` and optionally `dirty` and `note`, for files made otherwise. history:
    also record, per file, the commit that last changed it in git (`last_changed`)."""
    files = raw_files(folder)
    if not files:
        raise SystemExit(f"collect_run: {folder} holds no files to write a manifest of")
    parts = [dict(p, commit=full_commit(p["commit"], repo)) for p in parts or []]
    for p in parts:
        if not any(fnmatch.fnmatchcase(rel, g) for rel in files for g in p["files"]):
            raise SystemExit(f"collect_run: part {p['files']} matches no file of {folder}")
    out = {"run": folder.name, "commit": full_commit(commit, repo), "dirty": dirty, "command": command,
           "machine": machine_line, "collected": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "collected_by": collected_by}
    if note:
        out["note"] = note
    if parts:
        out["parts"] = parts
    out["files"] = {rel: sha256(data) for rel, data in files.items()}
    if history:
        out["git_last_changed"] = last_changed(folder, files, repo)
    if compare_to:
        out["compared"] = [compare(folder, o, repo) for o in compare_to]
    write_json(folder / MANIFEST, out)
    return out


def last_changed(folder: Path, files: dict[str, bytes], repo: Path = ROOT) -> dict[str, str]:
    """Per file of folder that git tracks with these very bytes, the commit that last changed it
    (`git log -1 -- FILE`); files changed since, or untracked, are left out."""
    out = {}
    for rel in files:
        p = folder / rel
        blob = _git(repo, "hash-object", str(p)).stdout.decode().strip()
        if _git(repo, "ls-files", "-s", "--", str(p)).stdout.decode().split()[1:2] == [blob]:
            out[rel] = _git(repo, "log", "--format=%H", "-1", "--", str(p)).stdout.decode().strip()
    return out


def manifest_commits(m: dict) -> list[str]:
    """The commits a manifest names: its own, then its parts'."""
    return [m["commit"], *(p["commit"] for p in m.get("parts", []))]


def check_manifest(folder: Path) -> list[str]:
    """What no longer matches folder's PROVENANCE.json: a missing manifest, and each file whose sha256 differs, that
    the manifest lists but the folder lacks, or that the folder holds but the manifest does not list."""
    f = folder / MANIFEST
    if not f.exists():
        return [f"{folder}: no {MANIFEST} (python docs/collect_run.py --manifest-only {folder} ...)"]
    listed, files = json.loads(f.read_text())["files"], raw_files(folder)
    problems = [f"{folder}/{rel}: sha256 differs from {MANIFEST}'s"
                for rel in sorted(set(listed) & set(files)) if sha256(files[rel]) != listed[rel]]
    problems += [f"{folder}/{rel}: listed in {MANIFEST} but missing" for rel in sorted(set(listed) - set(files))]
    problems += [f"{folder}/{rel}: not in {MANIFEST}" for rel in sorted(set(files) - set(listed))]
    return problems


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
            commit: str | None = None, machine_line: str | None = None, dirty: bool | None = None,
            compare_to: list[str] | None = None) -> list[Path]:
    """Replace dest with the small raw outputs of the finished run in res and its manifest; return the files written.

    commit and dirty default to the state of the checkout that holds res (dirty is that state when commit is
    not given, else null unless given)."""
    if not (res / "summary.csv").exists() and not (res / "frontier.csv").exists():
        raise SystemExit(f"collect_run: {res} has neither summary.csv nor frontier.csv: the run is not finished")
    head, state = git_state(res)
    if commit is None:
        if head == "unknown":
            raise SystemExit(f"collect_run: {res} is in no git checkout: name the run's commit with --commit")
        commit, dirty = head, state if dirty is None else dirty
    repo = res if head != "unknown" else ROOT
    commit = full_commit(commit, repo)
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in ("config.json", "summary.csv", "frontier.csv", "frontier_decision.csv", "frontier_paired.csv",
                 "cell_allocation.json", "thresholds.json", "mlflow_runs.json", "generation_samples.json"):
        if (res / name).exists():
            _copy(res / name, tmp / name)
    for p in sorted((res / "calibration").glob("*.npz")):  # the tables; the arrays (rotations, factors) stay behind
        out = tmp / "calibration" / f"{p.stem}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(calibration_summary(p), indent=1) + "\n")
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
    machine_line = machine_line or machine()
    by = f"python docs/collect_run.py {res} {dest.name}" + "".join(f" --log {p}" for p in logs)
    (tmp / "COMMAND").write_text(
        f"command: {command}\ncommit: {commit}\nresults: {res}\nmachine: {machine_line}\n"
        + (f"note: {note}\n" if note else "") +
        f"collected: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by {by}\n")
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    write_manifest(dest, commit=commit, dirty=dirty, command=command, machine_line=machine_line, collected_by=by,
                   note=note, compare_to=compare_to, repo=repo)
    return sorted(p for p in dest.rglob("*") if p.is_file())


def latest_log(res: Path) -> Path | None:
    """The newest Snakemake log that ran jobs, of the checkout that holds res (its .snakemake/log), if any."""
    for d in [res, *res.parents]:
        logs = [p for p in sorted((d / ".snakemake" / "log").glob("*.snakemake.log")) if "steps" in p.read_text()]
        if logs:
            return logs[-1]
    return None


def _bool(v: str) -> bool | None:
    return {"true": True, "false": False, "unknown": None}[v]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results_dir", type=Path, nargs="?")
    ap.add_argument("run_name", nargs="?")
    ap.add_argument("--manifest-only", type=Path, metavar="FOLDER",
                    help="write only FOLDER's PROVENANCE.json, from its files as they are (needs --commit, --command;"
                         " records the commit that last changed each file in git)")
    ap.add_argument("--dirty", choices=["true", "false", "unknown"], default=None,
                    help="whether the run's tree had uncommitted changes (default: the checkout's state when "
                         "--commit is not given, else unknown)")
    ap.add_argument("--part", nargs=3, action="append", default=[], metavar=("GLOB", "COMMIT", "COMMAND"),
                    help="--manifest-only: files of the folder made at another commit or by another command "
                         "(GLOBs separated by commas)")
    ap.add_argument("--compare-to", action="append", default=[], metavar="OTHER",
                    help="record per file whether it is identical to OTHER's (a folder, or COMMIT:PATH)")
    ap.add_argument("--log", type=Path, action="append", default=None,
                    help="Snakemake log (default: the checkout's newest); repeat it for a run resumed after a stop")
    ap.add_argument("--machine", default=None, help="the machine that made the run (default: this one)")
    ap.add_argument("--commit", default=None, help="the commit that made the run (default: the checkout's HEAD)")
    ap.add_argument("--command", default=None, help="the command that made the run (default: make run)")
    ap.add_argument("--note", default="", help="one line on how the run was made (e.g. a machine shared with other work)")
    a = ap.parse_args(argv)
    dirty = None if a.dirty is None else _bool(a.dirty)
    if a.manifest_only:
        if not a.commit or a.command is None:
            ap.error("--manifest-only needs --commit and --command: the folder's code and what ran")
        folder = a.manifest_only.resolve()
        if not folder.is_dir():
            ap.error(f"--manifest-only {a.manifest_only}: not a folder")
        parts = [{"files": g.split(","), "commit": c, "command": cmd, "dirty": None} for g, c, cmd in a.part]
        m = write_manifest(folder, commit=a.commit, dirty=dirty, command=a.command,
                           machine_line=a.machine or "not recorded", note=a.note, parts=parts,
                           compare_to=a.compare_to, history=True,
                           collected_by="python docs/collect_run.py " + shlex.join(sys.argv[1:] if argv is None
                                                                                  else argv))
        print(f"{folder / MANIFEST}: {len(m['files'])} files", file=sys.stderr)
        return
    if a.results_dir is None or a.run_name is None:
        ap.error("give RESULTS_DIR and RUN_NAME, or --manifest-only FOLDER")
    res = a.results_dir.resolve()
    log = a.log or latest_log(res)
    files = collect(res, DOCS / "results" / a.run_name, command=a.command or "make run", log=log, note=a.note, commit=a.commit,
                    machine_line=a.machine, dirty=dirty, compare_to=a.compare_to)
    print(f"{len(files)} files in docs/results/{a.run_name} (log: {log})", file=sys.stderr)


if __name__ == "__main__":
    main()
