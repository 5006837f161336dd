"""MLflow sync: one parent + one child per result, idempotent updates, concurrency, bad URIs."""

from __future__ import annotations

import csv
import hashlib
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_results import build_fake_results  # noqa: E402

from apc.common.atomic import read_json, write_json  # noqa: E402
from apc.results.tracking import (  # noqa: E402
    TrackingError,
    config_hash,
    default_tracking_uri,
    git_info,
    sync_results,
)

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

CONFIG = {"model": "fake/tiny-llm", "sparsity": 0.5, "budgets": {"train_tokens": 4096, "test_tokens": 2048},
          "ks": [1, 2, 4], "methods": ["apc", "static"]}
EXP = "apc-test"
GIT = {"commit": "deadbeef" * 5, "dirty": False}


def _fast_dir(tmp_path: Path) -> Path:
    """A store directory on tmpfs when there is one: sqlite commits fsync, which is slow on disk."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix="apc-mlflow-test-", dir=shm))
    d = tmp_path / "store"
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def blank_db(tmp_path_factory):
    """A freshly migrated, empty MLflow sqlite DB, built once (schema migration takes seconds)."""
    d = _fast_dir(tmp_path_factory.mktemp("template"))
    uri = default_tracking_uri(d)
    MlflowClient(tracking_uri=uri).search_experiments()
    yield d / "mlflow.db"
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def store(tmp_path, blank_db):
    d = _fast_dir(tmp_path)
    shutil.copy(blank_db, d / "mlflow.db")
    yield default_tracking_uri(d)
    shutil.rmtree(d, ignore_errors=True)


def _runs(uri: str, filter_string: str = "") -> list:
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXP)
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=1000,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _by_key(runs) -> dict:
    out = {}
    for r in runs:
        key = r.data.tags["apc.cell_key"]
        assert key not in out, f"duplicate run for {key}"
        out[key] = r
    return out


def _eval_all(path: Path, split: str) -> dict:
    with open(path, newline="") as fh:
        return next(r for r in csv.DictReader(fh) if r["split"] == split and r["layer"] == "all")


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_helpers(tmp_path):
    assert config_hash({"a": 1, "b": [1, 2]}) == config_hash({"b": [1, 2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})
    assert len(config_hash(CONFIG)) == 12
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert git_info(tmp_path) == {"commit": "unknown", "dirty": None}
    info = git_info(Path(__file__).resolve().parent)
    assert len(info["commit"]) == 40 and isinstance(info["dirty"], bool)


def test_sync_creates_parent_and_children(tmp_path, store):
    out = tmp_path / "res"
    desc = build_fake_results(out)
    (out / "plots").mkdir()
    (out / "plots" / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 100)

    res = sync_results(out, CONFIG, tracking_uri=store, experiment=EXP, git_info=GIT)
    assert res["children"] == desc["n_children"] == res["created"]
    assert res["updated"] == 0 and res["unchanged"] == 0

    runs = _runs(store)
    assert len(runs) == desc["n_children"] + 1
    parents = [r for r in runs if r.data.tags["apc.rule"] == "workflow"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.run_id == res["parent"]
    assert parent.data.tags["apc.config_hash"] == config_hash(CONFIG)
    assert parent.data.params["budgets.train_tokens"] == "4096"
    assert parent.data.params["ks"] == "1,2,4"
    children = _by_key([r for r in runs if r is not parent])
    assert len(children) == desc["n_children"]
    for r in children.values():
        assert r.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert r.data.tags["apc.git_commit"] == GIT["commit"] and r.data.tags["apc.git_dirty"] == "false"
        assert r.info.status == "FINISHED"

    client = MlflowClient(tracking_uri=store)
    parent_art = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"config.json", "thresholds.json", "plots"} <= parent_art
    assert [a.path for a in client.list_artifacts(parent.info.run_id, "plots")] == ["plots/fake.png"]
    cfg_path = client.download_artifacts(parent.info.run_id, "config.json", str(tmp_path))
    assert read_json(cfg_path) == CONFIG

    # extraction
    ext = read_json(out / "patterns" / "test" / "extract.json")
    r = children["extract/test"]
    assert r.data.tags["apc.rule"] == "extract_patterns"
    assert r.data.params["model"] == ext["model"] and r.data.params["sparsity"] == "0.5"
    assert r.data.metrics["n_tokens"] == ext["n_tokens"]
    assert r.data.metrics["wall_time_s"] == pytest.approx(ext["wall_time_s"])

    # clustering: params, metrics, per-iteration history, artifacts
    side = read_json(out / "clusters/gate/per_layer/apc-k4-s0/centroids.json")
    r = children["cluster/gate/per_layer/apc-k4-s0"]
    assert r.data.params["method"] == "apc" and r.data.params["k"] == "4" and r.data.params["seed"] == "0"
    assert r.data.params["scope"] == "per_layer" and r.data.params["layers"] == "0,1"
    assert float(r.data.params["centroid_density"]) == side["density"]
    assert r.data.metrics["iterations"] == side["iterations"]
    hist = client.get_metric_history(r.info.run_id, "objective_L1")
    want = [(h["iteration"], h["objective"]) for h in side["history"] if h["set"] == 1]
    got = sorted((m.step, m.value) for m in hist)
    assert [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want])
    assert {a.path for a in client.list_artifacts(r.info.run_id)} == {"centroids.json", "centroids.npy"}
    pooled = children["cluster/down_in/pooled/static-k1-s0"]
    assert len(client.get_metric_history(pooled.info.run_id, "objective")) == side["iterations"]

    # evaluation
    r = children["eval/down_in/pooled/apc-k2-s0"]
    csv_path = out / "eval/down_in/pooled/apc-k2-s0.csv"
    for split in ("train", "test"):
        row = _eval_all(csv_path, split)
        for m in ("recall", "paper_precision", "precision", "f1", "centroid_density", "data_density"):
            assert r.data.metrics[f"{split}_{m}"] == pytest.approx(float(row[m]))
    assert r.data.tags["apc.rule"] == "evaluate"
    assert len(client.get_metric_history(r.info.run_id, "test_recall_by_layer")) == desc["n_layers"]
    assert [a.path for a in client.list_artifacts(r.info.run_id)] == ["apc-k2-s0.csv"]

    # perplexity
    dense = read_json(out / "ppl/dense.json")
    assert children["ppl/dense"].data.metrics["ppl"] == pytest.approx(dense["ppl"])
    assert children["ppl/dense"].data.params["mode"] == "dense"
    sp = read_json(out / "ppl/sparse-paper.json")
    assert children["ppl/sparse-paper"].data.metrics["ppl"] == pytest.approx(sp["ppl"])
    assert children["ppl/sparse-paper"].data.metrics["kept_gate"] == pytest.approx(sp["kept"]["gate"])
    cell = read_json(out / "ppl/paper/pooled/apc-k4-s0.json")
    r = children["ppl/paper/pooled/apc-k4-s0"]
    for mode in ("centroid", "centroid_only", "random"):
        assert r.data.metrics[f"ppl_{mode}"] == pytest.approx(cell["modes"][mode]["ppl"])
        assert r.data.metrics[f"kept_{mode}_gate"] == pytest.approx(cell["modes"][mode]["kept"]["gate"])
    assert r.data.params["pset"] == "paper" and r.data.params["k"] == "4"


def test_resync_is_idempotent_and_updates_changed_cells(tmp_path, store):
    out = tmp_path / "res"
    desc = build_fake_results(out)
    first = sync_results(out, CONFIG, tracking_uri=store, experiment=EXP, git_info=GIT)
    again = sync_results(out, CONFIG, tracking_uri=store, experiment=EXP, git_info=GIT)
    assert again["parent"] == first["parent"]
    assert (again["created"], again["updated"], again["unchanged"]) == (0, 0, desc["n_children"])
    before = _by_key([r for r in _runs(store) if r.data.tags["apc.rule"] != "workflow"])

    # simulate --forcerun of two cells: new perplexity, and a clustering rerun with fewer iterations
    ppl_path = out / "ppl/paper/per_layer/apc-k2-s0.json"
    cell = read_json(ppl_path)
    cell["modes"]["centroid"]["ppl"] = 123.456
    write_json(ppl_path, cell)
    side_path = out / "clusters/gate/pooled/apc-k4-s0/centroids.json"
    side = read_json(side_path)
    side["history"] = [h for h in side["history"] if h["iteration"] == 1]
    side["history"][0]["objective"] = 7.5
    side["iterations"] = 1
    side["density"] = 0.55  # a param changes: MLflow forbids this in place
    write_json(side_path, side)

    third = sync_results(out, CONFIG, tracking_uri=store, experiment=EXP, git_info=GIT)
    assert third["parent"] == first["parent"]
    # 3 replaced: the two cells, plus the eval run of the reclustered cell (it carries centroid_density)
    assert (third["created"], third["updated"], third["unchanged"]) == (0, 3, desc["n_children"] - 3)
    runs = _runs(store)
    assert len(runs) == desc["n_children"] + 1
    after = _by_key([r for r in runs if r.data.tags["apc.rule"] != "workflow"])
    assert after.keys() == before.keys()

    r = after["ppl/paper/per_layer/apc-k2-s0"]
    assert r.data.metrics["ppl_centroid"] == pytest.approx(123.456)
    r = after["cluster/gate/pooled/apc-k4-s0"]
    assert r.data.params["centroid_density"] == "0.55" and r.data.metrics["iterations"] == 1
    hist = MlflowClient(tracking_uri=store).get_metric_history(r.info.run_id, "objective")
    assert [(m.step, m.value) for m in hist] == [(1, 7.5)]  # no stale steps from the first run
    assert after["eval/gate/pooled/apc-k4-s0"].data.params["centroid_density"] == "0.55"
    changed = ("ppl/paper/per_layer/apc-k2-s0", "cluster/gate/pooled/apc-k4-s0", "eval/gate/pooled/apc-k4-s0")
    assert all(after[k].info.run_id != before[k].info.run_id for k in changed)
    unchanged = [k for k in before if k not in changed]
    assert all(after[k].info.run_id == before[k].info.run_id for k in unchanged)

    # a different config is a different parent
    other = sync_results(out, {**CONFIG, "sparsity": 0.3}, tracking_uri=store, experiment=EXP, git_info=GIT)
    assert other["parent"] != first["parent"] and other["created"] == desc["n_children"]


def _worker(out, config, uri, barrier, queue):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        barrier.wait(timeout=120)
        res = sync_results(out, config, tracking_uri=uri, experiment=EXP, git_info=GIT)
        queue.put(("ok", res))
    except BaseException as err:  # noqa: BLE001 - report everything to the parent
        queue.put(("error", f"{type(err).__name__}: {err}"))


def test_four_concurrent_syncs_lose_nothing(tmp_path, store):
    small = {"projections": ("gate",)}
    trees = [tmp_path / "a", tmp_path / "b"]
    descs = [build_fake_results(t, rng_seed=i, **small) for i, t in enumerate(trees)]
    configs = [CONFIG, {**CONFIG, "model": "other"}]
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(trees[i % 2]), configs[i % 2], store, barrier, queue))
             for i in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(kind == "ok" for kind, _ in results), results
    assert all(p.exitcode == 0 for p in procs)

    runs = _runs(store)
    assert len(runs) == 2 + sum(d["n_children"] for d in descs)
    for cfg, desc in zip(configs, descs):
        mine = [r for r in runs if r.data.tags["apc.config_hash"] == config_hash(cfg)]
        parents = [r for r in mine if r.data.tags["apc.rule"] == "workflow"]
        assert len(parents) == 1
        children = _by_key([r for r in mine if r is not parents[0]])  # asserts no duplicates
        assert len(children) == desc["n_children"]
        assert {r.data.tags["mlflow.parentRunId"] for r in children.values()} == {parents[0].info.run_id}
    # per config: one process created everything, the other found it all in place
    for cfg in configs:
        res = [r for _, r in results if r["parent"] in {p.info.run_id for p in runs
                                                          if p.data.tags["apc.config_hash"] == config_hash(cfg)}]
        assert sorted(r["created"] for r in res) == [0, res[0]["children"]]


@pytest.mark.parametrize("uri", ["sqlite:////nonexistent/dir/x.db", "http://127.0.0.1:9", "bogus-scheme://x"])
def test_bad_tracking_uri(tmp_path, uri):
    out = tmp_path / "res"
    build_fake_results(out, projections=("gate",))
    before = _snapshot(out)
    t0 = time.time()
    with pytest.raises(TrackingError) as info:
        sync_results(out, CONFIG, tracking_uri=uri, experiment=EXP, git_info=GIT)
    assert uri in str(info.value)
    assert time.time() - t0 < 60
    assert _snapshot(out) == before  # nothing written, nothing touched
