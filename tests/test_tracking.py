"""MLflow sync: one study run + one run per sweep cell, sweep changes, idempotence, concurrency, bad URIs."""

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

import apc.results.tracking as tracking  # noqa: E402
from apc.common.atomic import read_json, write_json  # noqa: E402
from apc.results.records import Record  # noqa: E402
from apc.results.tracking import (  # noqa: E402
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    TrackingError,
    check_tracking_uri,
    default_tracking_uri,
    git_info,
    runs_page,
    study_headline,
    study_key,
    sync_results,
    upper_bound,
)

mlflow = pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

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


def _runs(uri: str, filter_string: str = "", view=None) -> list:
    from mlflow.entities import ViewType

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXP)
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], filter_string=filter_string, max_results=1000,
                                  run_view_type=view or ViewType.ACTIVE_ONLY, page_token=token)
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


def _cells(runs) -> dict:
    return _by_key([r for r in runs if r.data.tags["apc.kind"] == "cell"])


def _sync(config, uri):
    return sync_results(config, tracking_uri=uri, experiment=EXP, git_info=GIT)


def _with(config: dict, **cluster) -> dict:
    return {**config, "cluster": {**config["cluster"], **cluster}}


def test_helpers(tmp_path):
    cfg = build_fake_results(tmp_path / "res")["config"]
    # the study is what the cells share: the sweep lists do not change it, a setting does
    assert study_key(cfg) == study_key(_with(cfg, k=[2, 4, 8], methods=["apc"]))
    assert study_key(cfg) != study_key(_with(cfg, density=0.5))
    assert len(study_key(cfg)) == 12
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert git_info(tmp_path) == {"commit": "unknown", "dirty": None}
    info = git_info(Path(__file__).resolve().parent)
    assert len(info["commit"]) == 40 and isinstance(info["dirty"], bool)


def test_one_run_per_cell_with_precision_and_perplexity_together(tmp_path, store):
    out = tmp_path / "res"
    desc = build_fake_results(out)
    cfg = desc["config"]
    (out / "plots").mkdir()
    (out / "plots" / "fake.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 100)
    (out / "plots" / ".fake.png.tmp123.png").write_bytes(b"half-written")
    (out / "plots" / "frontier.html").write_text("<html></html>")

    res = _sync(cfg, store)
    assert res["cells"] == len(desc["cells"]) == res["created"]
    assert res["updated"] == res["unchanged"] == res["retired"] == 0

    runs = _runs(store)
    studies = [r for r in runs if r.data.tags["apc.kind"] == "study"]
    assert len(studies) == 1 and len(runs) == len(desc["cells"]) + 1
    study = studies[0]
    assert study.info.run_id == res["parent"] and study.data.tags["apc.study"] == study_key(cfg)
    assert study.info.run_name == "smoke · embedded:smollm2 · embedded-wikipedia"
    assert study.data.params["cluster.density"] == str(cfg["cluster"]["density"])
    assert "cluster.k" not in study.data.params and "cluster.methods" not in study.data.params
    dense = read_json(out / "ppl/dense.json")
    assert study.data.metrics["ppl_dense"] == pytest.approx(dense["ppl"])
    assert study.data.metrics["ppl_dense_lo"] < dense["ppl"] < study.data.metrics["ppl_dense_hi"]
    sp = read_json(out / "ppl/sparse-paper.json")
    assert study.data.metrics["ppl_sparse_paper"] == pytest.approx(sp["ppl"])
    assert study.data.metrics["ratio_sparse_paper"] == pytest.approx(sp["ppl"] / dense["ppl"])
    client = MlflowClient(tracking_uri=store)
    assert client.get_experiment(res["experiment_id"]).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    art = {a.path for a in client.list_artifacts(study.info.run_id)}
    assert {"config.json", "thresholds.json", "plots", "perplexity"} <= art
    assert [a.path for a in client.list_artifacts(study.info.run_id, "plots")] == ["plots/fake.png", "plots/frontier.html"]

    cells = _cells(runs)
    assert set(cells) == {"/".join([p, s, f"{m}-k{k}-d0.6-s{sd}"]) for p, s, m, k, sd in desc["cells"]}
    for key, r in cells.items():
        assert r.info.run_name == key
        assert r.data.tags["mlflow.parentRunId"] == study.info.run_id and r.data.tags["apc.in_sweep"] == "true"
        assert r.data.tags["apc.git_commit"] == GIT["commit"] and r.info.status == "FINISHED"

    # one cell: clustering, evaluation and perplexity in the same run, K/seed/density numeric
    key = "gate/per_layer/apc-k4-d0.6-s0"
    r = cells[key]
    side = read_json(out / "clusters/gate/per_layer/apc-k4-d0.6-s0/centroids.json")
    assert r.data.params["method"] == "apc" and r.data.params["scope"] == "per_layer"
    assert r.data.metrics["k"] == 4.0 and r.data.metrics["seed"] == 0.0
    assert r.data.metrics["centroid_density"] == side["density"] and r.data.metrics["iterations"] == side["iterations"]
    hist = client.get_metric_history(r.info.run_id, "objective_L01")
    want = [(h["iteration"], h["objective"]) for h in side["history"] if h["set"] == 1]
    assert sorted((m.step, m.value) for m in hist) == [(s, pytest.approx(v)) for s, v in want]
    row = _eval_all(out / "eval/gate/per_layer/apc-k4-d0.6-s0.csv", "test")
    for m in ("recall", "paper_precision", "precision", "f1", "centroid_density", "data_density"):
        assert r.data.metrics[f"test_{m}"] == pytest.approx(float(row[m]))
    assert len(client.get_metric_history(r.info.run_id, "test_recall_by_layer")) == desc["n_layers"]
    cell = read_json(out / "ppl/paper/per_layer/apc-k4-d0.6-s0.json")
    for mode in ("centroid", "centroid_only", "random"):
        md = cell["modes"][mode]
        assert r.data.metrics[f"ppl_paper_{mode}"] == pytest.approx(md["ppl"])
        assert r.data.metrics[f"ppl_paper_{mode}_lo"] == pytest.approx(md["ppl_lo"])
        assert r.data.metrics[f"kept_paper_{mode}"] == pytest.approx(md["kept"]["gate"])
        assert r.data.metrics[f"ratio_paper_{mode}"] == pytest.approx(md["ppl"] / dense["ppl"])
        assert r.data.metrics[f"ratio_paper_{mode}_lo"] <= r.data.metrics[f"ratio_paper_{mode}_hi"]
    assert not any(k.startswith("ppl_down_in") for k in r.data.metrics)  # the down_in set does not mask gate
    assert r.info.start_time == int(side["started_at"] * 1000)
    assert r.info.end_time >= int(side["finished_at"] * 1000)
    arts = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert arts == {"clustering", "evaluation", "perplexity"}


def test_sweep_changes_extend_shrink_rerun(tmp_path, store):
    out = tmp_path / "res"
    desc = build_fake_results(out)                      # K = 2, 4 (+ static K = 1)
    cfg = desc["config"]
    small = _with(cfg, k=[2])
    first = _sync(small, store)
    n_small = first["cells"]
    assert first["created"] == n_small and len(_cells(_runs(store))) == n_small

    grown = _sync(cfg, store)                           # extend K: only the new cells appear
    assert grown["parent"] == first["parent"]
    assert (grown["created"], grown["updated"], grown["unchanged"]) == (len(desc["cells"]) - n_small, 0, n_small)
    cells = _cells(_runs(store))                        # asserts one active run per key
    assert len(cells) == len(desc["cells"])

    again = _sync(cfg, store)                           # rerun: nothing changes
    assert (again["created"], again["updated"], again["retired"]) == (0, 0, 0)
    assert {k: r.info.run_id for k, r in _cells(_runs(store)).items()} == {k: r.info.run_id for k, r in cells.items()}

    shrunk = _sync(small, store)                        # shrink: the K = 4 cells leave the default view
    assert shrunk["retired"] == len(desc["cells"]) - n_small
    active = _cells(_runs(store))
    assert len(active) == n_small and not any("-k4-" in k for k in active)
    from mlflow.entities import ViewType

    gone = [r for r in _runs(store, view=ViewType.DELETED_ONLY) if "-k4-" in r.data.tags["apc.cell_key"]]
    assert gone and all(r.data.tags["apc.in_sweep"] == "false" for r in gone)

    back = _sync(cfg, store)                            # and back: the same runs return, nothing duplicated
    assert back["restored"] == len(desc["cells"]) - n_small and back["created"] == 0
    assert {k: r.info.run_id for k, r in _cells(_runs(store)).items()} == {k: r.info.run_id for k, r in cells.items()}


def test_changed_cell_replaces_its_run(tmp_path, store):
    out = tmp_path / "res"
    desc = build_fake_results(out)
    cfg = desc["config"]
    _sync(cfg, store)
    before = _cells(_runs(store))
    # --forcerun of one clustering cell: fewer iterations, a new density
    side_path = out / "clusters/gate/pooled/apc-k4-d0.6-s0/centroids.json"
    side = read_json(side_path)
    side["history"] = [h for h in side["history"] if h["iteration"] == 1]
    side["history"][0]["objective"] = 7.5
    side["iterations"], side["density"] = 1, 0.55
    write_json(side_path, side)
    res = _sync(cfg, store)
    assert (res["created"], res["updated"], res["unchanged"]) == (0, 1, len(desc["cells"]) - 1)
    after = _cells(_runs(store))
    key = "gate/pooled/apc-k4-d0.6-s0"
    assert after[key].info.run_id != before[key].info.run_id
    assert after[key].data.metrics["centroid_density"] == 0.55
    hist = MlflowClient(tracking_uri=store).get_metric_history(after[key].info.run_id, "objective")
    assert [(m.step, m.value) for m in hist] == [(1, 7.5)]  # no stale steps from the first run
    assert all(after[k].info.run_id == before[k].info.run_id for k in before if k != key)
    # a different shared setting is a different study
    other = _sync(_with(cfg, density=0.5), store)
    assert other["parent"] != res["parent"] and other["created"] == len(desc["cells"])


def test_a_rescore_to_the_same_results_leaves_the_run_and_a_new_number_replaces_it(tmp_path, store):
    """A perplexity batch rescored when other cells join it rewrites its cells' files with new job
    fields (times, batch size, GPU memory) and the same results: their runs stay; a changed value does not."""
    desc = build_fake_results(tmp_path / "res")
    cfg = desc["config"]
    _sync(cfg, store)
    before = _cells(_runs(store))
    pset, scope, method, k, seed = desc["ppl_cells"][0]
    path = tmp_path / "res" / "ppl" / pset / scope / f"{method}-k{k}-d0.6-s{seed}.json"
    d = read_json(path)
    for md in d["modes"].values():
        md.update(started_at=time.time(), finished_at=time.time() + 1.0, wall_time_s=1.0)
    write_json(path, {**d, "batch_cells": 7, "cuda_max_memory_allocated_bytes": 123})
    res = _sync(cfg, store)
    assert (res["created"], res["updated"], res["unchanged"]) == (0, 0, len(desc["cells"]))
    assert {k: r.info.run_id for k, r in _cells(_runs(store)).items()} == \
        {k: r.info.run_id for k, r in before.items()}
    mode = next(iter(d["modes"]))
    d["modes"][mode]["window_nll_sum"][0] += 1e-9
    write_json(path, d)
    res = _sync(cfg, store)
    covered = [c for c in desc["cells"] if c[0] in desc["psets"][pset] and c[1:] == (scope, method, k, seed)]
    assert covered and (res["created"], res["updated"]) == (0, len(covered))


def _worker(config, uri, barrier, queue):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        barrier.wait(timeout=120)
        queue.put(("ok", sync_results(config, tracking_uri=uri, experiment=EXP, git_info=GIT)))
    except BaseException as err:  # noqa: BLE001 - report everything to the parent
        queue.put(("error", f"{type(err).__name__}: {err}"))


def test_four_concurrent_syncs_lose_nothing(tmp_path, store):
    descs = [build_fake_results(tmp_path / n, rng_seed=i, projections=("gate",), psets={"paper": ["gate"]}) for i, n in enumerate("ab")]
    configs = [d["config"] for d in descs]
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(4), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(configs[i % 2], store, barrier, queue)) for i in range(4)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(kind == "ok" for kind, _ in results), results
    runs = _runs(store)
    assert len(runs) == 2 + sum(len(d["cells"]) for d in descs)
    for cfg, desc in zip(configs, descs):
        mine = [r for r in runs if r.data.tags["apc.study"] == study_key(cfg)]
        studies = [r for r in mine if r.data.tags["apc.kind"] == "study"]
        assert len(studies) == 1
        assert len(_cells(mine)) == len(desc["cells"])
        res = [r for _, r in results if r["study"] == study_key(cfg)]
        assert sorted(r["created"] for r in res) == [0, len(desc["cells"])]


@pytest.mark.parametrize("uri", ["FILE", "http://127.0.0.1:9", "bogus-scheme://x"])
def test_bad_tracking_uri(tmp_path, uri):
    out = tmp_path / "res"
    cfg = build_fake_results(out, projections=("gate",), psets={"paper": ["gate"]})["config"]
    if uri == "FILE":  # a sqlite store whose folder is a regular file
        (tmp_path / "afile").write_text("x")
        uri = f"sqlite:///{tmp_path / 'afile' / 'x.db'}"
    before = _snapshot(out)
    t0 = time.time()
    with pytest.raises(TrackingError) as info:
        check_tracking_uri(uri, EXP)
    assert uri in str(info.value) and "mlflow.tracking_uri" in str(info.value)
    with pytest.raises(TrackingError) as info:
        _sync(cfg, uri)
    assert uri in str(info.value)
    assert time.time() - t0 < 60
    assert _snapshot(out) == before  # nothing written, nothing touched


def test_the_kind_is_mlflows_own_model_training_kind():
    """The tag and value are those the installed MLflow UI reads and writes, and so is the view switch."""
    js = Path(mlflow.__file__).parent / "server" / "js" / "build" / "static" / "js"
    bundle = "".join(p.read_text(errors="replace") for p in sorted(js.glob("*.js")))
    assert f'"{EXPERIMENT_KIND_TAG}"' in bundle
    assert f'CUSTOM_MODEL_DEVELOPMENT="{EXPERIMENT_KIND}"' in bundle
    key, value = tracking.UI_VIEW_QUERY.split("=")
    assert f'MACHINE_LEARNING="{value}"' in bundle and f'get("{key}")' in bundle
    assert runs_page("7") == f"#/experiments/7/runs?{key}={value}"


@pytest.mark.parametrize("before", [None, {}, {EXPERIMENT_KIND_TAG: "genai_development"}])
def test_the_experiment_is_of_the_model_training_kind_new_or_existing(tmp_path, store, before):
    cfg = build_fake_results(tmp_path / "res", projections=("gate",), psets={"paper": ["gate"]})["config"]
    client = MlflowClient(tracking_uri=store)
    if before is not None:  # an experiment made before the kind was set, or switched to GenAI by hand
        client.create_experiment(EXP, artifact_location=(tmp_path / "artifacts").as_uri(), tags=before)
        assert client.get_experiment_by_name(EXP).tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND
    res = _sync(cfg, store)
    assert client.get_experiment(res["experiment_id"]).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    assert len(client.search_experiments()) == 2  # Default and this one: the existing experiment was reused


def _point(line: str, share: float, compute: float, ratio: float, kl: float, pset: str = "down_in") -> Record:
    """A frontier point's record as :func:`apc.results.records.frontier_records` builds it (ratio interval +-0.02)."""
    r = Record(f"frontier/{pset}/{line}/{share:g}", f"frontier/{pset}/{line}/{share:g}", kind="frontier")
    r.param(pset=pset, line=line, family=line.split(".")[0].split("-")[0])
    for k, v in dict(share=share, compute_share=compute, ratio=ratio, ratio_lo=ratio - 0.02, ratio_hi=ratio + 0.02,
                     kl=kl).items():
        r.metric(k, v)
    return r


def _frontier(lines=("teal", "wina", "oracle.per_layer.apc-k8-s0", "experts-oracle.s0.2-e32")) -> list[Record]:
    ratios = {"teal": (1.30, 1.10, 1.02), "wina": (1.25, 1.08, 1.04), "oracle.per_layer.apc-k8-s0": (1.04, 1.02, 1.01),
              "experts-oracle.s0.2-e32": (1.03, 1.02, 1.01)}
    return [_point(line, s, s + 0.01, ratios[line][i], 0.3 * (1 - s) ** 2) for line in lines
            for i, s in enumerate((0.4, 0.6, 0.8))]


def _cross(x0: float, x1: float, y0: float, y1: float, level: float) -> float:
    """Where the segment (x0, y0)-(x1, y1) meets ``level``, as the study logs it (``SHARE_DIGITS`` decimals)."""
    return round(x0 + (x1 - x0) * (y0 - level) / (y0 - y1), tracking.SHARE_DIGITS)


def test_the_headline_is_the_least_compute_of_a_deployable_line():
    assert upper_bound("oracle.per_layer.apc-k8-s0") and upper_bound("experts-oracle.s0.2-e32")
    assert not upper_bound("experts-learned.s0.2-e32") and not upper_bound("predicted-linear-m1.per_layer.apc-k8-s0")
    metrics, tags = study_headline(_frontier())
    m = dict(metrics)
    assert len(m) == len(metrics)  # one value per name
    # teal crosses 1.05x between compute 0.61 (1.10) and 0.81 (1.02), wina later (1.08 -> 1.04)
    teal = _cross(0.61, 0.81, 1.10, 1.02, 1.05)
    assert m["down_in/teal/compute_at_1.05x"] == pytest.approx(teal)
    assert m["down_in/wina/compute_at_1.05x"] == pytest.approx(_cross(0.61, 0.81, 1.08, 1.04, 1.05))
    assert m["down_in/compute_at_1.05x"] == pytest.approx(teal) and tags["apc.down_in.line_at_1.05x"] == "teal"
    assert m["down_in/compute_at_1.05x_lo"] == pytest.approx(_cross(0.61, 0.81, 1.08, 1.00, 1.05))
    assert m["down_in/compute_at_1.05x_hi"] == pytest.approx(_cross(0.61, 0.81, 1.12, 1.04, 1.05))
    # the oracle lines get there first, and are reported only as upper bounds
    assert m["down_in/upper_bound/compute_at_1.05x"] == pytest.approx(0.41)
    assert tags["apc.down_in.upper_bound_at_1.05x"] in ("oracle.per_layer.apc-k8-s0", "experts-oracle.s0.2-e32")
    assert not any(upper_bound(v) for k, v in tags.items() if ".line_at_" in k)
    assert m["down_in/teal/0.6/ratio"] == 1.10 and m["down_in/teal/0.6/compute_share"] == 0.61
    assert m["down_in/wina/0.8/kl"] == pytest.approx(0.3 * 0.2 ** 2)
    # KL 0.2 nats: every line at its first point (0.3 * 0.6 ** 2 = 0.108); 0.05: between 0.4 and 0.6
    assert m["down_in/compute_at_kl0.2"] == pytest.approx(0.41)
    assert m["down_in/compute_at_kl0.05"] == pytest.approx(_cross(0.41, 0.61, 0.108, 0.048, 0.05))
    assert "down_in/compute_at_1.25x" in m and (m["frontier_lines"], m["frontier_points"]) == (4, 12)
    # a level no deployable line reaches is left out, never a NaN column
    metrics, tags = study_headline([_point("teal", 0.6, 0.6, 1.5, 0.5)])
    assert "down_in/compute_at_1.05x" not in dict(metrics) and tags == {}
    assert study_headline([]) == ([], {})


def test_the_study_run_shows_the_sweeps_key_figures(tmp_path, store, monkeypatch):
    cfg = build_fake_results(tmp_path / "res", projections=("gate",), psets={"paper": ["gate"]})["config"]
    points = _frontier()
    monkeypatch.setattr(tracking, "frontier_records", lambda config, dense: list(points))
    first = _sync(cfg, store)
    runs = _runs(store)
    study = next(r for r in runs if r.data.tags["apc.kind"] == "study")
    want, tags = study_headline(points)
    assert {k: study.data.metrics[k] for k, _ in want} == pytest.approx(dict(want))
    assert {k: study.data.tags[k] for k in tags} == tags
    assert study.data.metrics["ppl_dense"] > 0  # the references stay
    assert _sync(cfg, store)["parent"] == first["parent"]  # unchanged: the same run
    # wina leaves the sweep: its columns would go stale, so a new study run replaces the old one
    points[:] = _frontier(("teal", "oracle.per_layer.apc-k8-s0"))
    second = _sync(cfg, store)
    assert second["parent"] != first["parent"]
    runs = _runs(store)
    study = next(r for r in runs if r.data.tags["apc.kind"] == "study")
    assert study.info.run_id == second["parent"] and not any("wina" in k for k in study.data.metrics)
    assert study.data.tags["apc.down_in.upper_bound_at_1.05x"] == "oracle.per_layer.apc-k8-s0"
    assert all(r.data.tags["mlflow.parentRunId"] == second["parent"] for r in runs if r is not study)
    assert sum(r.data.tags["apc.kind"] == "study" for r in runs) == 1
