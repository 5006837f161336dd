"""Dry runs and plans of the documented presets, captured into docs/results/plans/ for `make docs` to render.

    python docs/collect_plans.py [PRESET ...]      (default: default smoke frontier magnitude mistral7b-wikitext2)

For each preset: `snakemake -n --forceall --quiet rules --config preset=P outdir=TMP` (the whole DAG, whatever is
already on disk), written as jobs-P.tsv (job, count; a `total` row). For the Mistral preset also the storage plan
(`python -m apc plan`, the free-space line left out: it is the machine's) and the sbatch lines of the Slurm
profile (`benchmarks/slurm_submit_lines.py`). COMMAND names the commands and the commit; PROVENANCE.json is the
folder's manifest (docs/collect_run.py): the commit, whether the tree was dirty, each file's sha256. Files of presets
not given this time keep the commit and command their previous manifest gave them (a part).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS))

from collect_run import MANIFEST, git_state, machine, write_manifest  # noqa: E402

BIN = Path(sys.executable).parent
PRESETS = ["default", "smoke", "frontier", "magnitude", "mistral7b-wikitext2"]
#: storage plans of the Mistral preset: as configured, and with every store whole over the paper's 163 test windows
WHOLE = "{patterns: {train: null, test: null}, magnitudes: {train: null, test: null}, ffn_inputs: {train: null, test: null}}"
PLANS = {"storage-mistral7b-wikitext2": [],
         "storage-mistral7b-wikitext2-whole": ["--set", f"store={WHOLE}", "--set", "data={test_tokens: 333824}"]}


def _run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"collect_plans: {' '.join(cmd)} failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    return r.stdout + r.stderr


def job_stats(log: str) -> list[tuple[str, int]]:
    """The last `Job stats:` table of a Snakemake dry run: (job, count) rows, `total` last."""
    block = log.rsplit("Job stats:", 1)[1]
    return [(m.group(1), int(m.group(2))) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", block, re.M)]


def kept_parts(dest: Path, written: set[str]) -> list[dict]:
    """The previous manifest's provenance of the folder's files that this collection does not rewrite: one part
    per (commit, command), for `write_manifest`."""
    f = dest / MANIFEST
    if not f.exists():
        return []
    old = json.loads(f.read_text())
    groups: dict[tuple, list[str]] = {}
    for rel in sorted(set(old["files"]) - written - {"COMMAND"}):
        src = next((q for q in old.get("parts", []) if any(fnmatch.fnmatchcase(rel, g) for g in q["files"])), old)
        groups.setdefault((src["commit"], src["command"], src.get("dirty")), []).append(rel)
    return [{"files": files, "commit": c, "command": cmd, "dirty": d} for (c, cmd, d), files in groups.items()]


def main(argv: list[str]) -> None:
    presets = argv or PRESETS
    dest = DOCS / "results" / "plans"
    dest.mkdir(parents=True, exist_ok=True)
    head, dirty = git_state(ROOT)
    written = {"COMMAND"}
    cmds = []
    with tempfile.TemporaryDirectory() as tmp:
        for p in presets:
            cmd = [str(BIN / "snakemake"), "-n", "--forceall", "--quiet", "rules", "--config", f"preset={p}",
                   f"outdir={tmp}/{p}"]
            rows = job_stats(_run(cmd))
            (dest / f"jobs-{p}.tsv").write_text("job\tcount\n" + "".join(f"{j}\t{c}\n" for j, c in rows))
            written.add(f"jobs-{p}.tsv")
            cmds.append(" ".join(["snakemake"] + cmd[1:-1] + ["outdir=TMP"]))
        if "mistral7b-wikitext2" in presets:
            for name, extra in PLANS.items():
                cmd = [sys.executable, "-m", "apc", "plan", "--preset", "mistral7b-wikitext2", *extra]
                r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "src"})
                plan = "\n".join(ln for ln in (r.stdout + r.stderr).splitlines() if "free" not in ln)
                (dest / f"{name}.txt").write_text(plan + "\n")
                written.add(f"{name}.txt")
                cmds.append(" ".join(["python -m apc plan --preset mistral7b-wikitext2", *map(repr, extra)])
                            + f" > {name}.txt (free-space line left out)")
            cmd = [sys.executable, "benchmarks/slurm_submit_lines.py", "-n", "--workflow-profile",
                   "workflow/profiles/slurm", "--config", "preset=mistral7b-wikitext2", f"outdir={tmp}/m7s"]
            lines = [ln for ln in _run(cmd).splitlines() if re.match(r"^\w+: sbatch ", ln)]
            (dest / "sbatch-mistral7b-wikitext2.txt").write_text("\n".join(lines) + "\n")
            written.add("sbatch-mistral7b-wikitext2.txt")
            cmds.append(" ".join(["python"] + cmd[1:-1] + ["outdir=TMP"]))
    command = "python docs/collect_plans.py " + " ".join(presets)
    (dest / "COMMAND").write_text(
        f"command: {command}\n" + "".join(f"runs: {c}\n" for c in cmds)
        + f"commit: {head}\n" + ("dirty: the tree had uncommitted changes\n" if dirty else "")
        + f"collected: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}\n")
    write_manifest(dest, commit=head, dirty=dirty, command=command, machine_line=machine(), collected_by=command,
                   parts=kept_parts(dest, written))


if __name__ == "__main__":
    main(sys.argv[1:])
