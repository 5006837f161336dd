"""The per-rule report of a run: Snakemake log parsing, measurements, request check, extrapolation."""

import importlib.util

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("rule_report", ROOT / "benchmarks" / "rule_report.py")
rr = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rr)

LOG = """
[Tue Dec  1 21:02:04 2026]
rule cluster:
    input: out/patterns/train
    output: out/c{k}.npy
    log: out/logs/cluster-{k}.log
    jobid: 6
    benchmark: out/benchmarks/cluster-{k}.tsv
    wildcards: proj=gate, scope=pooled, method=apc, k={k}, density=0.6, seed=0
    resources: tmpdir=/tmp, runtime={runtime}, gpu=1, mem_mb={mem}, mem=1 GB
"""


def _job(tmp_path, k, seconds, rss, runtime, mem, peak):
    (tmp_path / "out" / "benchmarks").mkdir(parents=True, exist_ok=True)
    (tmp_path / "out" / "logs").mkdir(exist_ok=True)
    (tmp_path / "out" / "benchmarks" / f"cluster-{k}.tsv").write_text(
        f"s\th:m:s\tmax_rss\tmax_vms\n{seconds}\t0:00:10\t{rss}\t1\n")
    (tmp_path / "out" / "logs" / f"cluster-{k}.log").write_text(f"x: peak CUDA memory allocated: {peak} bytes\n")
    (tmp_path / "out" / f"c{k}.npy").write_bytes(b"0" * 1000)
    return LOG.format(k=k, runtime=runtime, mem=mem)


def test_report_measures_checks_and_extrapolates(tmp_path, monkeypatch):
    text = _job(tmp_path, 8, 10.0, 1000, 1, 2000, 2**30) + _job(tmp_path, 64, 80.0, 1000, 10, 9000, 2**31)
    (tmp_path / "run.log").write_text(text)
    monkeypatch.chdir(tmp_path)
    jobs = rr.measure(rr.parse_snakemake_log("run.log"))
    assert [j["wildcards"]["k"] for j in jobs] == ["8", "64"] and jobs[0]["disk_bytes"] == 1000
    rules = rr.per_rule(jobs)
    r = rules["cluster"]
    assert r["jobs"] == 2 and r["seconds"] == 90 and r["cuda_bytes"] == 2**31 and r["gpu"] == 1
    assert r["mem_ratio"] == [9.0]  # the 10 s job's RSS is one 30 s sample, not a peak: shown, not checked
    bad = rr.check_requests(rules)
    assert any("mem_mb is 9.00x to 9.00x" in b for b in bad)  # 9x the peak RSS is too generous
    assert any("runtime is 6.0x to 7.5x" in b for b in bad)  # a job of 80 s asked for 10 min
    a, b = rr.k_fit(jobs, "cluster")
    assert a + b * 8 == pytest.approx(10) and a + b * 64 == pytest.approx(80)
    rows = rr.extrapolate(jobs, rules, {"cluster": 3, "summary": 1}, [8, 64, 64], {}, 2.0)
    assert len(rows) == 1 and rows[0]["seconds"] == pytest.approx(2 * (10 + 80 + 80))
    assert "cluster" in rr.markdown(rules, rows)


def test_dryrun_job_counts():
    text = "Job stats:\njob      count\n-----  -------\ncluster    110\nevaluate   110\ntotal    220\n"
    assert rr.dryrun_counts(text) == {"cluster": 110, "evaluate": 110}


def test_logged_peak_rss_wins_over_the_sampled_one(tmp_path, monkeypatch):
    """A job's own getrusage peak (logged at exit) replaces the benchmark's 30 s-sampled max_rss."""
    text = _job(tmp_path, 8, 10.0, 100, 1, 2000, 2**30)
    with open(tmp_path / "out" / "logs" / "cluster-8.log", "a") as f:
        f.write(f"y: peak host RSS: {500 * 2**20} bytes\n")
    (tmp_path / "run.log").write_text(text + _job(tmp_path, 64, 80.0, 1000, 10, 9000, 2**31))
    monkeypatch.chdir(tmp_path)
    jobs = rr.measure(rr.parse_snakemake_log("run.log"))
    assert [j["rss_mb"] for j in jobs] == [500.0, 1000.0]
    assert sorted(rr.per_rule(jobs)["cluster"]["mem_ratio"]) == [4.0, 9.0]


def test_rule_scripts_log_their_peak_host_rss(tmp_path):
    """rulekit's exit hook writes the line the report reads."""
    import logging

    from apc import rulekit

    log = logging.getLogger("apc.test_peak")
    handler = logging.FileHandler(tmp_path / "job.log")
    log.addHandler(handler), log.setLevel(logging.INFO)
    rulekit._log_peaks(log)
    handler.flush()
    peak = rr._RSS.findall((tmp_path / "job.log").read_text())
    assert len(peak) == 1 and int(peak[0]) > 10 * 2**20  # an interpreter with torch holds more than 10 MB
