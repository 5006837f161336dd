"""Mirror the current sweep of a results folder into MLflow: one run per sweep cell.

Layout of the MLflow side
-------------------------
* The experiment (``mlflow.experiment``) carries MLflow 3's kind tag ``mlflow.experimentKind =
  custom_model_development`` (model training, not GenAI), set when it is created and on an existing
  one.  The UI 3.17 picks its view from its own switch, not from the tag: :func:`runs_page` is the
  address of the runs table in the model-training view.
* One *study* run per set of shared settings: model, data, extraction, clustering and
  evaluation settings, the perplexity budget and the output folder -- not the sweep lists,
  so extending or shrinking a sweep keeps its study.  Tags ``apc.kind = "study"`` and
  ``apc.study`` (:func:`study_key`); named ``<preset> · <model> · <corpus>``.  Params: the
  shared settings.  Metrics: dense and true-sparse perplexities with intervals, the
  thresholds per layer, and the sweep's key figures as columns (:func:`study_headline`: per
  projection set the least compute share a deployable line needs to reach 1.05x / 1.25x dense
  perplexity and 0.05 / 0.2 nats KL, the same for the upper bounds, each line's crossings and
  each point's compute share, ratio and KL), the lines reaching them as tags.  Artifacts: the
  resolved config, thresholds, summary and plots (PNG and HTML).  A study run that would keep a metric the
  current sweep no longer has is replaced (its children move to the new one); otherwise it is
  updated in place.
* One *cell* run per clustering cell ``(projection, scope, method, K, seed)``, child of the
  study, named by its key (``gate/per_layer/apc-k32-s0``, tag ``apc.cell_key``).  It holds
  the clustering parameters and per-iteration history (metric steps), train and test
  coverage metrics, and for every projection set that masks its projection, every
  perplexity mode's perplexity, interval, paired ratio to dense, KL from dense, top-1 agreement
  and kept share.  K, seed and
  density are metrics too, so charts plot them on numeric axes.  Start and end times are
  those of the cell's jobs.
* One *frontier* run per point of the compute-quality frontier (:mod:`apc.common.frontier`),
  child of the study, tag ``apc.kind = "frontier"``, named and keyed by the point
  (``frontier/down_in/predicted-linear-m1.per_layer.apc-k128-s0/0.6``); tag
  ``apc.frontier_cells`` links it to the clustering cell(s) whose centroids it uses.  It holds
  the perplexity with interval and paired ratio to dense, the mean KL from dense and top-1
  agreement with dense (``kl``, ``top1``, with intervals), tokens, resampling units, kept share,
  predictor FLOPs share and compute share.  Frontier runs follow the same sync rules as cell runs.
* One *experts* run per neuron-experts cell (:mod:`apc.common.neuron_experts`), child of the study, tag
  ``apc.kind = "experts"``, named and keyed ``experts/{proj}/s{S}-e{E}``: the experts' sizes, held-out
  coverage, mass coverage and density of every router and k, the router FLOPs shares.

Sync ("replace on change")
--------------------------
Everything a run carries (a :class:`apc.results.records.Record`, built in
:mod:`apc.results.records`) is derived from the result files of the current sweep (listed
from the resolved config by :func:`apc.results.inputs.sweep_files`, never a folder
scan); a sha256 of that payload (JSON artifacts without the fields that only say when, how fast
or in which batch a job ran) is the tag ``apc.content_hash``, and a run is complete
once FINISHED, which is set last.  Under a file lock, for each current cell:

* an active complete run with the same hash -> left alone ("unchanged");
* a deleted complete run with the same hash (the cell left the sweep and came back) ->
  restored ("restored");
* otherwise a new run is logged, then the cell's other active runs are deleted
  ("created" or "updated").

Active runs of cells (and frontier points) no longer in the sweep are tagged ``apc.in_sweep = false`` and
soft-deleted ("retired"), so the default view shows exactly the current sweep; ``mlflow
gc`` purges them, a later sync restores them if they return unchanged.  Replacement rather
than logging into the old run is deliberate: MLflow forbids changing a logged param and
cannot delete metric history.

Concurrency
-----------
All reads and writes of one sync hold a :class:`filelock.FileLock` on ``<db file>.lock``
for ``sqlite:`` URIs (``<outdir>/.mlflow-sync.lock`` otherwise), so concurrent syncs are
serialised: no duplicate runs, no "database is locked".
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from apc.common.progress import get_logger
from apc.results.paired import deployable
from apc.results.records import Record, cell_records, expert_records, frontier_records, study_key, study_record

log = get_logger("apc.results.tracking")

LOCK_TIMEOUT_S = 900.0
_HTTP_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000


class TrackingError(RuntimeError):
    """The tracking store could not be reached or written."""


#: Experiment tag MLflow 3 reads as the experiment's kind, and the value of its model-training kind
#: (``mlflow/server/js``: ``ExperimentKind.CUSTOM_MODEL_DEVELOPMENT``; the others are
#: ``genai_development``, ``finetuning``, ``forecasting``, ``classification``, ``regression``, ``automl``)
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: The UI's own switch between its GenAI and model-training views (query parameter of the page's
#: address; without it the UI 3.17 uses the browser's last choice, GenAI at first, whatever the tag says)
UI_VIEW_QUERY = "workflowType=machine_learning"

#: Crossing columns of the decision table (:func:`apc.results.frontier.crossings`) -> study metric names
CROSSING_METRICS = {"share_1.05": "compute_at_1.05x", "share_1.25": "compute_at_1.25x",
                    "share_kl0.05": "compute_at_kl0.05", "share_kl0.2": "compute_at_kl0.2"}
#: Decimals of an interpolated crossing share (far below its interval's width; columns read 0.735, not 0.73500000001)
SHARE_DIGITS = 4
#: Figures of each frontier point copied onto the study run, ``{pset}/{line}/{share}/{figure}``
POINT_FIGURES = ("compute_share", "ratio", "kl")


def runs_page(experiment_id: str) -> str:
    """The address, after the server's root, of the experiment's runs table in the model-training view."""
    return f"#/experiments/{experiment_id}/runs?{UI_VIEW_QUERY}"


def upper_bound(line: str) -> bool:
    """True for a line that is not :func:`apc.results.paired.deployable` (oracle cluster masks, the oracle router of
    the neuron experts: they read the true activations): an upper bound on what a deployable method can reach.
    The static K = 1 mask is deployable."""
    return not deployable(line)


def study_headline(frontier: list[Record]) -> tuple[list[tuple[str, float]], dict[str, str]]:
    """The sweep's key figures for the study run's columns, from the frontier points' records.

    Per projection set ``P``: ``P/compute_at_1.05x`` (and ``_1.25x``, ``_kl0.05``, ``_kl0.2``) is the
    least compute share (:data:`SHARE_DIGITS` decimals) at which a deployable line (not
    :func:`upper_bound`) reaches 1.05x dense perplexity (a mean KL of 0.05 nats ...), the decision
    table's crossing, with that line's ``_lo``/``_hi`` from its interval; tag
    ``apc.P.line_at_1.05x`` names the line.  ``P/upper_bound/compute_at_...`` and tag
    ``apc.P.upper_bound_at_...`` are the same over the upper bounds.  Per line ``L``:
    ``P/L/compute_at_...`` and, per kept share ``s``, ``P/L/s/compute_share``, ``/ratio``, ``/kl``.
    ``frontier_lines`` and ``frontier_points`` count them.  Returns ``([(key, value)], {tag: value})``;
    levels no line reaches and bounds without an interval are left out (no NaN columns).
    """
    import pandas as pd

    from apc.results.frontier import crossings

    rows, metrics = [], []
    for rec in frontier:
        m = {k: v for k, v, step in rec.metrics if step == 0}
        pset, line = rec.params["pset"], rec.params["line"]
        rows.append({"pset": pset, "line": line, "family": rec.params["family"],
                     **{k: m.get(k, float("nan")) for k in ("compute_share", "ratio", "ratio_lo", "ratio_hi",
                                                            "kl", "kl_lo", "kl_hi")}})
        metrics += [(f"{pset}/{line}/{m['share']:g}/{f}", m[f]) for f in POINT_FIGURES if f in m and "share" in m]
    if not rows:
        return [], {}
    dec = crossings(pd.DataFrame(rows))
    dec["upper"] = [upper_bound(line) for line in dec["line"]]
    tags: dict[str, str] = {}
    for pset, g in dec.groupby("pset", sort=True):
        for col, name in CROSSING_METRICS.items():
            metrics += [(f"{pset}/{line}/{name}", round(v, SHARE_DIGITS)) for line, v in zip(g["line"], g[col])]
            for upper, prefix, tag in ((False, "", "line"), (True, "upper_bound/", "upper_bound")):
                reached = g[(g["upper"] == upper) & g[col].notna()]
                if len(reached):
                    first = reached.loc[reached[col].idxmin()]
                    metrics += [(f"{pset}/{prefix}{name}{sfx}", round(first[col + sfx], SHARE_DIGITS))
                                for sfx in ("", "_lo", "_hi")]
                    tags[f"apc.{pset}.{tag}_at_{name[len('compute_at_'):]}"] = str(first["line"])
    metrics += [("frontier_lines", float(len(dec))), ("frontier_points", float(len(rows)))]
    return [(k, float(v)) for k, v in metrics if math.isfinite(v)], tags


def default_tracking_uri(outdir_root: str | os.PathLike) -> str:
    """``sqlite:///<abs path>/mlflow.db`` inside ``outdir_root``."""
    return f"sqlite:///{Path(outdir_root).resolve() / 'mlflow.db'}"


def git_info(repo_dir: str | os.PathLike = ".") -> dict:
    """``{"commit": sha or "unknown", "dirty": bool or None}``; never raises."""
    def _git(*args: str) -> str | None:
        try:
            res = subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.SubprocessError):
            return None
        return res.stdout if res.returncode == 0 else None

    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": "unknown", "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit.strip(), "dirty": None if status is None else bool(status.strip())}


_git_info = git_info  # ``sync_results`` has a keyword argument of the same name


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:"):]
    if not rest.startswith("///"):
        raise TrackingError(f"malformed sqlite tracking URI {uri!r}: expected sqlite:///<path>")
    path = rest[3:].split("?", 1)[0]
    if path in ("", ":memory:"):
        raise TrackingError(f"tracking URI {uri!r} is not a file-backed sqlite store")
    return Path(path)


@contextlib.contextmanager
def _http_env() -> Iterator[None]:
    """Fail fast on unreachable http stores unless the user configured retries."""
    added = [k for k in _HTTP_ENV_DEFAULTS if k not in os.environ]
    for k in added:
        os.environ[k] = _HTTP_ENV_DEFAULTS[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


# ----------------------------------------------------------------------------- MLflow I/O
def _lock_path(uri: str, out: Path) -> Path:
    db = _sqlite_path(uri)
    if db is not None:
        return db.with_name(db.name + ".lock")
    return out / ".mlflow-sync.lock"


def _search_all(client, exp_id: str, filter_string: str, view=None) -> list:
    from mlflow.entities import ViewType

    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string=filter_string, run_view_type=view or ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _batches(params: list, metrics: list, tags: list) -> Iterator[tuple[list, list, list]]:
    """Split into log_batch calls within MLflow's limits (100 params+tags, 1000 entities)."""
    params, metrics, tags = list(params), list(metrics), list(tags)
    while params or metrics or tags:
        p = params[:_MAX_PARAMS_PER_BATCH]
        t = tags[:_MAX_PARAMS_PER_BATCH - len(p)]
        m = metrics[:_MAX_METRICS_PER_BATCH - len(p) - len(t)]
        del params[:len(p)], tags[:len(t)], metrics[:len(m)]
        yield p, m, t


def _log_record(client, run_id: str, rec: Record, extra_tags: dict[str, str]) -> None:
    """Artifacts first, then params/metrics/tags in as few batches as the limits allow."""
    from mlflow.entities import Metric, Param, RunTag

    for path, adir in rec.artifacts:
        client.log_artifact(run_id, str(path), adir)
    now = int(time.time() * 1000)
    for p, m, t in _batches([Param(k, v) for k, v in rec.params.items()],
                            [Metric(k, v, now, s) for k, v, s in rec.metrics],
                            [RunTag(k, v) for k, v in extra_tags.items()]):
        client.log_batch(run_id, metrics=m, params=p, tags=t)


def _complete(run) -> bool:
    """A run is complete once marked FINISHED, which happens after everything is logged."""
    return run.info.status == "FINISHED"


def check_tracking_uri(uri: str, experiment: str) -> None:
    """Cheap reachability check before any job runs; :class:`TrackingError` saying what to do.

    A ``sqlite:`` store needs a writable folder (the file is created on first use); any other
    store must answer one read.
    """
    hint = ("set mlflow.tracking_uri to a reachable store (or null for the local sqlite file), "
            "or start the tracking server")
    db = _sqlite_path(uri)
    if db is not None:
        folder = db.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir() or not os.access(folder, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingError(f"MLflow tracking URI {uri!r}: {db} is not writable; {hint}")
        return
    with _http_env():
        try:
            _client(uri, experiment)
        except TrackingError as err:
            raise TrackingError(f"{err}; {hint}") from None


def sync_results(config: dict, *, tracking_uri: str, experiment: str, git_info: dict | None = None) -> dict:
    """Upsert the current sweep of ``config`` (a resolved config) into MLflow (see module docstring).

    Returns ``{"parent", "experiment_id", "study", "cells", "experts", "frontier", "created", "updated", "unchanged",
    "restored", "retired"}``; the study run also carries :func:`study_headline` of the frontier points.  Raises :class:`TrackingError` naming ``tracking_uri`` if the store
    is unreachable or rejects a write; result files are only read, never written.
    """
    out = Path(config["outdir"]).resolve()
    if not out.is_dir():
        raise FileNotFoundError(f"results directory not found: {out}")
    ginfo = git_info if git_info is not None else _git_info(Path(__file__).resolve().parent)
    commit = str(ginfo.get("commit") or "unknown")
    dirty = ginfo.get("dirty")
    base_tags = {"apc.git_commit": commit, "apc.git_dirty": "unknown" if dirty is None else str(bool(dirty)).lower(),
                 "mlflow.source.git.commit": commit}
    db = _sqlite_path(tracking_uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise TrackingError(f"cannot use MLflow tracking URI {tracking_uri!r}: {err}") from err
    records, dense = cell_records(config)
    n_cells = len(records)
    experts = expert_records(config)
    records += experts
    records += frontier_records(config, dense)

    from filelock import FileLock, Timeout

    lock_file = _lock_path(tracking_uri, out)
    t0 = time.time()
    with _http_env(), tempfile.TemporaryDirectory(prefix="apc-mlflow-") as tmp:
        study = study_record(config, Path(tmp), records)
        headline, headline_tags = study_headline(records[n_cells + len(experts):])
        for key, value in headline:
            study.metric(key, value)
        study.tags.update(headline_tags)
        client = None
        if db is None:  # probe remote stores before taking a lock in outdir
            client = _client(tracking_uri, experiment)
        try:
            with FileLock(str(lock_file), timeout=LOCK_TIMEOUT_S):
                if client is None:  # sqlite: even the schema creation must be serialised
                    client = _client(tracking_uri, experiment)
                try:
                    result = _sync_locked(client, experiment, db, study_key(config), study, records, base_tags,
                                          str(out))
                    result.update(cells=n_cells, experts=len(experts), frontier=len(records) - n_cells - len(experts))
                except TrackingError:
                    raise
                except Exception as err:  # noqa: BLE001 - MLflow raises many types
                    raise TrackingError(f"MLflow sync to {tracking_uri!r} failed: "
                                        f"{type(err).__name__}: {err}") from err
        except Timeout as err:
            raise TrackingError(f"timed out after {LOCK_TIMEOUT_S:.0f}s waiting for lock {lock_file} "
                                f"(tracking URI {tracking_uri!r})") from err
    log.info("mlflow sync %s -> %s [%s]: %d cells (%d created, %d updated, %d unchanged, %d restored, "
             "%d retired) in %.1fs; runs table: <server>/%s", out, tracking_uri, experiment, result["cells"],
             result["created"], result["updated"], result["unchanged"], result["restored"], result["retired"],
             time.time() - t0, runs_page(result["experiment_id"]))
    return result


def _client(uri: str, experiment: str):
    """An MlflowClient whose store answered one read; TrackingError naming ``uri`` otherwise."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        client.get_experiment_by_name(experiment)
    except Exception as err:  # noqa: BLE001 - MLflow raises many types
        raise TrackingError(f"cannot reach MLflow tracking URI {uri!r}: {type(err).__name__}: {err}") from err
    return client


def _experiment(client, experiment: str, db: Path | None) -> str:
    """The experiment's id, created or restored, its kind set to model training (:data:`EXPERIMENT_KIND`)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        art = (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None
        return client.create_experiment(experiment, artifact_location=art, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:  # an experiment made before, or by hand
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def _new_run(client, exp_id: str, rec: Record, tags: dict[str, str]) -> str:
    from mlflow.entities import RunStatus

    run = client.create_run(exp_id, run_name=rec.name, start_time=rec.start_ms, tags=tags)
    _log_record(client, run.info.run_id, rec, {})
    client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.FINISHED), end_time=rec.end_ms)
    return run.info.run_id


def _sync_locked(client, experiment, db, skey, study, records, base_tags, outdir) -> dict:
    from mlflow.entities import ViewType

    exp_id = _experiment(client, experiment, db)
    runs = _search_all(client, exp_id, f"tags.`apc.study` = '{skey}'", ViewType.ALL)
    studies = sorted((r for r in runs if r.data.tags.get("apc.kind") == "study" and r.info.lifecycle_stage == "active"),
                     key=lambda r: (_complete(r), r.info.start_time or 0), reverse=True)
    shash = study.content_hash()
    study_tags = {**base_tags, "apc.kind": "study", "apc.study": skey, "apc.cell_key": "study", "apc.outdir": outdir}
    stale = bool(studies) and bool(set(studies[0].data.metrics) - {k for k, _, _ in study.metrics})
    if studies and _complete(studies[0]) and not stale:
        parent_id = studies[0].info.run_id
        for dup in studies[1:]:
            client.delete_run(dup.info.run_id)
        if studies[0].data.tags.get("apc.content_hash") != shash:
            _log_record(client, parent_id, study, study.tags)
            client.set_tag(parent_id, "apc.content_hash", shash)
        if study.end_ms and studies[0].info.end_time != study.end_ms:
            client.set_terminated(parent_id, "FINISHED", end_time=study.end_ms)
    else:
        parent_id = _new_run(client, exp_id, study, {**study_tags, **study.tags, "apc.content_hash": shash})
        for old in studies:
            client.delete_run(old.info.run_id)

    by_key: dict[tuple[str, str], list] = {}
    for run in runs:
        if run.data.tags.get("apc.kind") in ("cell", "experts", "frontier"):
            by_key.setdefault((run.data.tags["apc.kind"], run.data.tags.get("apc.cell_key", "")), []).append(run)
    counts = dict(created=0, updated=0, unchanged=0, restored=0, retired=0)
    for rec in records:
        h = rec.content_hash()
        have = by_key.pop((rec.kind, rec.cell_key), [])
        active = [r for r in have if r.info.lifecycle_stage == "active"]
        same = [r for r in have if _complete(r) and r.data.tags.get("apc.content_hash") == h]
        keep = next((r for r in same if r.info.lifecycle_stage == "active"), None) or (same[0] if same else None)
        if keep is not None:
            if keep.info.lifecycle_stage != "active":
                client.restore_run(keep.info.run_id)
                counts["restored"] += 1
            else:
                counts["unchanged"] += 1
            if keep.data.tags.get("apc.in_sweep") != "true":
                client.set_tag(keep.info.run_id, "apc.in_sweep", "true")
            if keep.data.tags.get("mlflow.parentRunId") != parent_id:
                client.set_tag(keep.info.run_id, "mlflow.parentRunId", parent_id)
        else:
            _new_run(client, exp_id, rec, {**base_tags, **rec.tags, "apc.kind": rec.kind, "apc.study": skey,
                                           "apc.cell_key": rec.cell_key, "apc.content_hash": h,
                                           "apc.in_sweep": "true", "mlflow.parentRunId": parent_id})
            counts["updated" if active else "created"] += 1
        for r in active:
            if keep is None or r.info.run_id != keep.info.run_id:
                client.delete_run(r.info.run_id)
    for stale in by_key.values():  # cells that left the sweep
        for r in stale:
            if r.info.lifecycle_stage == "active":
                client.set_tag(r.info.run_id, "apc.in_sweep", "false")
                client.delete_run(r.info.run_id)
                counts["retired"] += 1
    return {"parent": parent_id, "experiment_id": exp_id, "study": skey, "cells": len(records), **counts}
