"""Mirror the current sweep of a results folder into MLflow: one run per sweep cell.

Layout of the MLflow side
-------------------------
* The experiment (``mlflow.experiment``) is tagged as model development, so the UI opens
  its runs table.
* One *study* run per set of shared settings: model, data, extraction, clustering and
  evaluation settings, the perplexity budget and the output folder -- not the sweep lists,
  so extending or shrinking a sweep keeps its study.  Tags ``apc.kind = "study"`` and
  ``apc.study`` (:func:`study_key`); named ``<preset> · <model> · <corpus>``.  Params: the
  shared settings.  Metrics: dense and true-sparse perplexities with intervals, the
  thresholds per layer.  Artifacts: the resolved config, thresholds, summary and plots.
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

Sync ("replace on change")
--------------------------
Everything a run carries is derived from the result files of the current sweep (listed
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
import csv
import hashlib
import json
import math
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from apc.common.atomic import read_json, write_json
from apc.common.progress import get_logger

log = get_logger("apc.results.tracking")

SCHEMA_VERSION = "5"  # bump when the mapping files -> params/metrics changes (forces replacement)
LOCK_TIMEOUT_S = 900.0
_HTTP_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_LEN = 6000
_KEY_RE = re.compile(r"[^\w\-. /]")


class TrackingError(RuntimeError):
    """The tracking store could not be reached or written."""


# ----------------------------------------------------------------------------- helpers
#: Keys of ``cluster`` that list the sweep rather than settle how each cell is computed.
SWEEP_KEYS = ("methods", "k", "scopes", "projections", "seeds", "cells")


def shared_settings(config: dict) -> dict:
    """What every cell of a study shares: the config without the sweep lists (and without the
    tracking block, the device and thread counts, which do not change any result)."""
    c = config["cluster"]
    return {
        "preset": config.get("preset"), "outdir": str(Path(config["outdir"]).resolve()),
        "model": config["model"], "data": config["data"], "extract": config["extract"],
        "cluster": {k: v for k, v in c.items() if k not in SWEEP_KEYS},
        "eval": config["eval"], "perplexity": {"test_tokens": config["perplexity"]["test_tokens"]},
    }


def study_key(config: dict) -> str:
    """Stable 12-hex-digit hash of :func:`shared_settings` (key order does not matter)."""
    blob = json.dumps(shared_settings(config), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


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


def _key(name: str) -> str:
    return _KEY_RE.sub("_", name)[:250]


def _pval(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        s = ",".join(str(x) for x in v)
    elif isinstance(v, dict):
        s = json.dumps(v, sort_keys=True, default=str)
    else:
        s = str(v)
    return s[:_MAX_PARAM_LEN]


def _num(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ----------------------------------------------------------------------------- records
@dataclass
class _Record:
    """Everything one run will carry, derived from result files only."""

    cell_key: str
    name: str
    kind: str = "cell"  # tag apc.kind: "cell" or "frontier"
    tags: dict[str, str] = field(default_factory=dict)  # extra tags (a frontier point's clustering cells)
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int]] = field(default_factory=list)  # (key, value, step)
    artifacts: list[tuple[Path, str | None]] = field(default_factory=list)  # (file, artifact dir)
    start_ms: int | None = None
    end_ms: int | None = None

    def param(self, **kw: Any) -> None:
        for k, v in kw.items():
            if v is not None:
                self.params[_key(k)] = _pval(v)

    def metric(self, key: str, value: Any, step: int = 0) -> None:
        x = _num(value)
        if x is not None and math.isfinite(x):
            self.metrics.append((_key(key), x, int(step)))

    def times(self, start_s: float | None, end_s: float | None) -> None:
        """Widen the run's time span to cover a job from ``start_s`` to ``end_s`` (epoch seconds)."""
        if start_s is not None:
            ms = int(start_s * 1000)
            self.start_ms = ms if self.start_ms is None else min(self.start_ms, ms)
        if end_s is not None:
            ms = int(end_s * 1000)
            self.end_ms = ms if self.end_ms is None else max(self.end_ms, ms)

    def content_hash(self) -> str:
        h = hashlib.sha256(SCHEMA_VERSION.encode())
        h.update(json.dumps([self.cell_key, self.name, self.kind, sorted(self.tags.items()), sorted(self.params.items()),
                             [(k, repr(v), s) for k, v, s in self.metrics]]).encode())
        for path, adir in self.artifacts:
            h.update(f"\0{adir}/{path.name}\0".encode())
            h.update(_content_bytes(path))
        return h.hexdigest()[:16]


# Keys of a JSON result that say when, how fast or in which batch a job ran, not what it found.
_JOB_KEYS = ("started_at", "finished_at", "wall_time_s", "batch_cells")


def _without_job_fields(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_job_fields(v) for k, v in obj.items() if k not in _JOB_KEYS and not k.startswith("cuda_")}
    if isinstance(obj, list):
        return [_without_job_fields(v) for v in obj]
    return obj


def _content_bytes(path: Path) -> bytes:
    """What an artifact contributes to a run's content hash: its bytes, and for a JSON file its
    values without the job fields (``_JOB_KEYS``, ``cuda_*``), so that a job rerun to the same
    results (a perplexity batch rescored when other cells joined it) leaves its runs unchanged."""
    if path.suffix != ".json":
        return path.read_bytes()
    return json.dumps(_without_job_fields(read_json(path)), sort_keys=True, separators=(",", ":")).encode()


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _ppl_metrics(r: _Record, prefix: str, result: dict, dense: dict | None, proj: str | None = None) -> None:
    """``{prefix}``, ``_lo``, ``_hi``, the paired ratio to dense, the KL from dense and top-1 agreement
    (with intervals; a bound without an interval is not logged) and the kept share of ``proj``."""
    from apc.results.summary import _interval_columns

    for k, v in _interval_columns(prefix, result, dense).items():
        r.metric(k, v)
    kept = result.get("kept") or {}
    if proj is not None and proj in kept:
        r.metric("kept" + prefix[len("ppl"):], kept[proj])


def cell_records(config: dict) -> tuple[list[_Record], dict | None]:
    """One record per cell of the current sweep (sorted by key), and the dense result if present.

    Missing result files of a cell are skipped (a cell of a partly finished run carries
    what exists)."""
    from apc.results.inputs import sweep_files
    from apc.common.layout import Layout

    lay = Layout(config["outdir"])
    files = sweep_files(config)
    dense_path = Path(lay.ppl_dense())
    dense = read_json(dense_path) if dense_path.exists() else None
    psets = config["perplexity"]["psets"]
    ppl_by_group: dict[tuple, list[Path]] = {}
    for (pset, pc), path in zip(files.ppl_cells, files.ppl):
        ppl_by_group.setdefault(pc.group, []).append(Path(path))
    records = []
    for cell in files.cells:
        r = _Record(cell.key, cell.key)
        r.param(projection=cell.proj, scope=cell.scope, method=cell.method, k=cell.k, density=cell.density,
                seed=cell.seed)
        r.metric("k", cell.k)
        r.metric("density", cell.density)
        r.metric("seed", cell.seed)
        meta_path, npy = Path(lay.centroids_meta(cell)), Path(lay.centroids(cell))
        if meta_path.exists():
            d = read_json(meta_path)
            r.param(model=d.get("model"), dataset=d.get("dataset"), layers=d.get("layers"), options=d.get("options") or {},
                    max_patterns_per_layer=d.get("max_patterns_per_layer"))
            r.metric("centroid_density", d.get("mask_density", d.get("density")))  # one token's mask
            r.metric("groups", d.get("product_groups", 1))
            for k in ("iterations", "converged", "n_train_patterns"):
                r.metric(k, d.get(k))
            r.metric("cluster_wall_time_s", d.get("wall_time_s"))
            per_set = cell.scope == "per_layer"
            for h in d.get("history") or []:
                suffix = f"_L{h.get('set', 0):02d}" if per_set else ""
                for stat in ("objective", "changed", "empty"):
                    if stat in h:
                        r.metric(f"{stat}{suffix}", h[stat], step=int(h.get("iteration", 0)))
            r.times(d.get("started_at"), d.get("finished_at"))
            r.artifacts += [(meta_path, "clustering"), (npy, "clustering")] if npy.exists() else [(meta_path, "clustering")]
        ev = Path(lay.eval_table(cell))
        if ev.exists():
            for row in _read_csv(ev):
                split = row["split"]
                for c in ("recall", "mass_recall", "paper_precision", "precision", "f1", "centroid_density",
                          "data_density", "compute_share", "random_recall"):
                    if not row.get(c):
                        continue
                    if row["layer"] == "all":
                        r.metric(f"{split}_{c}", row[c])
                    elif c in ("recall", "mass_recall", "precision", "centroid_density"):
                        r.metric(f"{split}_{c}_by_layer", row[c], step=int(row["layer"]))
            r.times(None, ev.stat().st_mtime)
            r.artifacts.append((ev, "evaluation"))
        for path in ppl_by_group.get(cell.group, []):
            if not path.exists():
                continue
            d = read_json(path)
            if cell.proj not in psets.get(d["pset"], []):
                continue
            for mode, md in (d.get("modes") or {}).items():
                _ppl_metrics(r, f"ppl_{d['pset']}_{mode}", md, dense, cell.proj)
                r.times(None, md.get("finished_at"))
            r.artifacts.append((path, f"perplexity/{d['pset']}"))
        records.append(r)
    return sorted(records, key=lambda r: r.cell_key), dense


def frontier_records(config: dict, dense: dict | None) -> list[_Record]:
    """One record per frontier point of the current config (sorted by key; missing points skipped).

    Named and keyed ``frontier/{pset}/{line}/{share}`` (:class:`apc.common.frontier.Point`), tag
    ``apc.frontier_cells`` = the clustering cell keys the point uses (``proj=key``, ``;``-joined; empty
    for threshold and random).  Metrics: perplexity with interval and paired ratio to dense, KL from
    dense and top-1 agreement (with intervals), tokens, units, kept share, FLOPs share of each product, predictor FLOPs share, compute share, the batch
    view (``union_b{B}``, ``grouped_b{B}``); artifacts: the point and the
    predictor reports it used.
    """
    from apc.results.inputs import sweep_files

    files = sweep_files(config)
    out = []
    for point, path in zip(files.points, map(Path, files.frontier)):
        if not path.exists():
            continue
        d = read_json(path)
        r = _Record(point.key, point.key, kind="frontier",
                    tags={"apc.frontier_cells": ";".join(f"{q}={k}" for q, k in sorted((d.get("cells") or {}).items()))})
        r.param(pset=d["pset"], line=d["line"], family=d["family"], mode=d["mode"], projections=d["projections"],
                model=d.get("model"), dataset=d.get("dataset"))
        _ppl_metrics(r, "ppl", d, dense)
        for k in ("share", "tokens", "windows", "units", "kept_share", "ffn_flops_share", "predictor_flops_share",
                  "compute_share"):
            r.metric(k, d.get(k))
        from apc.results.frontier import point_columns

        for k, v in point_columns(d).items():  # FLOPs per product, batch view, time shares
            r.metric(k, v)
        r.times(d.get("started_at"), d.get("finished_at"))
        r.artifacts.append((path, "frontier"))
        out.append(r)
    return sorted(out, key=lambda r: r.cell_key)


def study_record(config: dict, tmpdir: Path, cells: list[_Record]) -> _Record:
    """The study run: shared settings, dense and true-sparse references, thresholds, summary, plots;
    its time span covers every job of its ``cells`` and references."""
    from apc.common.layout import Layout
    from apc.results.summary import reference_columns

    lay = Layout(config["outdir"])
    manifest = Path(lay.manifest())
    model = read_json(manifest)["name"] if manifest.exists() else str(config["model"]["name_or_path"])
    data = config["data"]
    corpus = "/".join(filter(None, [data.get("hf_path"), data.get("hf_name")])) if data["source"] == "huggingface" \
        else data["source"]
    r = _Record("study", f"{config.get('preset', 'custom')} · {model} · {corpus}")
    for k, v in _flatten(shared_settings(config)).items():
        r.param(**{k: "" if v is None else v})
    cfg = tmpdir / "config.json"
    write_json(cfg, config)
    r.artifacts.append((cfg, None))
    refs = [p for p in [lay.ppl_dense()] + [lay.ppl_sparse(s) for s in config["perplexity"]["psets"]]
            if Path(p).exists()]
    for k, v in reference_columns(refs)[0].items():
        r.metric(k, v)
    for p in refs:
        r.artifacts.append((Path(p), "perplexity"))
        d = read_json(p)
        r.times(d.get("started_at"), d.get("finished_at"))
    for c in cells:
        r.times(c.start_ms / 1000 if c.start_ms else None, c.end_ms / 1000 if c.end_ms else None)
    stored = {s: read_json(p).get("magnitude_bytes") for s in ("train", "test")
              if (p := Path(lay.extract_summary(s))).exists()}
    for split, n in stored.items():
        r.metric(f"magnitude_bytes_{split}", n)
    if stored and None not in stored.values():
        r.metric("magnitude_bytes", sum(stored.values()))  # the magnitude store of both splits
    thr = Path(lay.thresholds())
    if thr.exists():
        for proj, rows in (read_json(thr).get("projections") or {}).items():
            for row in rows:
                r.metric(f"threshold_{proj}", row.get("threshold"), step=int(row.get("layer", 0)))
                r.metric(f"achieved_sparsity_{proj}", row.get("achieved_sparsity"), step=int(row.get("layer", 0)))
        r.artifacts.append((thr, None))
    for table in (Path(lay.summary()), Path(lay.frontier_table())):
        if table.exists():
            r.artifacts.append((table, None))
    plots = Path(lay.plots())
    if plots.is_dir():
        for png in sorted(plots.glob("[!.]*.png")):
            r.artifacts.append((png, "plots"))
    return r


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


def _log_record(client, run_id: str, rec: _Record, extra_tags: dict[str, str]) -> None:
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

    Returns ``{"parent", "experiment_id", "study", "cells", "frontier", "created", "updated", "unchanged",
    "restored", "retired"}``.  Raises :class:`TrackingError` naming ``tracking_uri`` if the store
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
    records += frontier_records(config, dense)

    from filelock import FileLock, Timeout

    lock_file = _lock_path(tracking_uri, out)
    t0 = time.time()
    with _http_env(), tempfile.TemporaryDirectory(prefix="apc-mlflow-") as tmp:
        study = study_record(config, Path(tmp), records)
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
                    result.update(cells=n_cells, frontier=len(records) - n_cells)
                except TrackingError:
                    raise
                except Exception as err:  # noqa: BLE001 - MLflow raises many types
                    raise TrackingError(f"MLflow sync to {tracking_uri!r} failed: "
                                        f"{type(err).__name__}: {err}") from err
        except Timeout as err:
            raise TrackingError(f"timed out after {LOCK_TIMEOUT_S:.0f}s waiting for lock {lock_file} "
                                f"(tracking URI {tracking_uri!r})") from err
    log.info("mlflow sync %s -> %s [%s]: %d cells (%d created, %d updated, %d unchanged, %d restored, "
             "%d retired) in %.1fs", out, tracking_uri, experiment, result["cells"], result["created"],
             result["updated"], result["unchanged"], result["restored"], result["retired"], time.time() - t0)
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
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        art = (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None
        exp_id = client.create_experiment(experiment, artifact_location=art)
    else:
        exp_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp_id)
    # open the runs table ("Model training"), not the GenAI overview
    client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
    return exp_id


def _new_run(client, exp_id: str, rec: _Record, tags: dict[str, str]) -> str:
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
    if studies and _complete(studies[0]):
        parent_id = studies[0].info.run_id
        for dup in studies[1:]:
            client.delete_run(dup.info.run_id)
        if studies[0].data.tags.get("apc.content_hash") != shash:
            _log_record(client, parent_id, study, {})
            client.set_tag(parent_id, "apc.content_hash", shash)
        if study.end_ms and studies[0].info.end_time != study.end_ms:
            client.set_terminated(parent_id, "FINISHED", end_time=study.end_ms)
    else:
        parent_id = _new_run(client, exp_id, study, {**study_tags, "apc.content_hash": shash})
        for old in studies:
            client.delete_run(old.info.run_id)

    by_key: dict[tuple[str, str], list] = {}
    for run in runs:
        if run.data.tags.get("apc.kind") in ("cell", "frontier"):
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
