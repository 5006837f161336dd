"""Job resources, profiles and lint of the real Snakefile (dry runs only; no job runs)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
RULE_FILES = [ROOT / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]


def rules_and_scripts() -> dict[str, str]:
    """``{rule: text of its script}`` for every rule with a ``script:`` directive."""
    out = {}
    for f in RULE_FILES:
        # a plain rule, or a rule defined in a loop (``rule:`` with a ``name:``, the first name its base)
        for m in re.finditer(r'^\s*rule(?: (\w+)|:\s*\n\s*name:\s*\n\s*"(\w+)")(.*?)(?=^\s*rule[ :]|\Z)', f.read_text(),
                             re.S | re.M):
            s = re.search(r'script:\s*\n\s*"([^"]+)"', m.group(3))
            if s:
                out[m.group(1) or m.group(2)] = (f.parent / s.group(1)).resolve().read_text()
    return out


def base_rule(rule: str) -> str:
    """The rule a numbered rule of a loop belongs to (``frontier_line_1`` -> ``frontier_line``)."""
    return re.sub(r"^(frontier_line)_\d+$", r"\1", rule)


def uses_cuda(script: str) -> bool:
    if "resolve_device" not in script and 'device="cpu"' in script:
        return False  # loads the model on the CPU on purpose (e.g. down_norms)
    return any(call in script for call in ("job_model(", "load_model(", "resolve_device", "device="))


def dry_run(tmp_path, *args):
    cmd = [*SNAKEMAKE, "-n", "--config", "preset=mistral7b-wikitext2", f"outdir={tmp_path}/out", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


def job_resources(text: str) -> dict[str, set[str]]:
    """``{rule: {resource lines}}`` from a dry run's job listing."""
    out: dict[str, set[str]] = {}
    for m in re.finditer(r"^(?:local)?rule (\w+):\n(?:    .*\n)*?    resources: (.*)$", text, re.M):
        out.setdefault(m.group(1), set()).add(m.group(2))
    return out


def test_every_model_or_cuda_rule_declares_gpu(tmp_path):
    scripts = rules_and_scripts()
    gpu_rules = {r for r, s in scripts.items() if uses_cuda(s)}
    assert {"calibrate_thresholds", "extract_patterns", "cluster", "evaluate", "perplexity_batch", "frontier_line"} <= gpu_rules
    # `all`, plus the rules only some sweeps need (the `output` weighting's column norms, greedy cell allocations)
    run = dry_run(tmp_path, "--cores", "16", "--", "all", f"{tmp_path}/out/model/down_norms.npy",
                  f"{tmp_path}/out/cell_allocation.json")
    assert run.returncode == 0, run.stderr[-2000:]
    res = {}
    for rule, lines in job_resources(run.stdout).items():
        res.setdefault(base_rule(rule), set()).update(lines)
    assert set(scripts) <= set(res), set(scripts) - set(res)
    for rule, lines in res.items():
        if rule == "all":
            continue
        for line in lines:
            assert "mem_mb=" in line and "runtime=" in line, (rule, line)
            # the preset runs on CUDA: every rule that may touch it asks for the GPU, no other does
            assert ("gpu=1" in line) == (rule in gpu_rules), (rule, line)


def test_one_gpu_job_at_a_time_with_gpu_1(tmp_path):
    stats = tmp_path / "rounds.json"
    cmd = [sys.executable, str(ROOT / "tests" / "sched_probe.py"), "-n", "--cores", "16", "--resources", "gpu=1",
           "--scheduler", "greedy", "--config", "preset=mistral7b-wikitext2", f"outdir={tmp_path}/out"]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "SCHED_STATS": str(stats)})
    assert run.returncode == 0, run.stderr[-2000:]
    rounds = json.loads(stats.read_text())
    assert max(len(r["ready"]) for r in rounds) >= 100  # the clustering cells become ready together
    assert all(len(r["selected"]) <= 1 for r in rounds), rounds
    assert sum(len(r["selected"]) for r in rounds) >= 4  # and GPU jobs are still started


def test_slurm_profile_parses_and_names_existing_rules():
    profile = yaml.safe_load((ROOT / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    rules = set(rules_and_scripts()) | {"all"}
    assert profile["executor"] == "slurm"
    assert profile["latency-wait"] > 0 and profile["retries"] >= 1 and profile["rerun-incomplete"] is True
    for key in ("set-resources", "set-threads"):
        assert profile[key] and set(map(base_rule, profile[key])) <= rules, set(map(base_rule, profile[key])) - rules
    gpu_rules = {r for r, s in rules_and_scripts().items() if uses_cuda(s)}
    assert {base_rule(r) for r, v in profile["set-resources"].items() if v.get("slurm_partition") == "gpu"} == gpu_rules
    default = yaml.safe_load((ROOT / "workflow" / "profiles" / "default" / "config.yaml").read_text())
    assert "gpu=1" in default["resources"]


def test_slurm_profile_dry_run(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    run = dry_run(tmp_path, "--workflow-profile", "workflow/profiles/slurm")
    assert run.returncode == 0, run.stderr[-2000:]
    assert "slurm_partition=gpu" in run.stdout and "gpu=1" in run.stdout


def test_lint_has_only_the_software_deployment_lint(tmp_path):
    run = subprocess.run([*SNAKEMAKE, "--lint", "--config", "preset=smoke", f"outdir={tmp_path}/out"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    titles = set(re.findall(r"^\s+\* (.+?):?$", run.stdout + run.stderr, re.M))
    # no conda/container per rule: the environment is the pinned pyproject.toml
    assert titles <= {"Specify a conda environment or container for each rule."}, titles
