"""Mirror a results tree into MLflow: one parent run per configuration, one child run per job result.

Layout of the MLflow side
-------------------------
* Parent run: tag ``apc.config_hash`` (:func:`config_hash` of the resolved config),
  ``apc.rule = "workflow"``, ``apc.cell_key = "config"``.  Params: the config dict
  flattened with dotted keys (immutable, because the hash identifies the config).
  Artifacts: ``config.json``, ``thresholds.json``, ``plots/*.png``.  Metrics: the
  per-layer thresholds (``threshold_{proj}``, step = layer).
* Child runs (tag ``mlflow.parentRunId``), one per result file, keyed by the tag
  ``apc.cell_key``:

  ====================================================  ===================  ==================
  result file                                            apc.cell_key         apc.rule
  ====================================================  ===================  ==================
  patterns/{split}/extract.json                          extract/{split}      extract_patterns
  clusters/{proj}/{scope}/{cell}/centroids.json (+npy)   cluster/{proj}/...   cluster
  eval/{proj}/{scope}/{cell}.csv                         eval/{proj}/...      evaluate
  ppl/dense.json                                         ppl/dense            ppl_dense
  ppl/sparse-{pset}.json                                 ppl/sparse-{pset}    ppl_sparse
  ppl/{pset}/{scope}/{cell}.json                         ppl/{pset}/...       ppl_cell
  ====================================================  ===================  ==================

Idempotent update ("replace on change")
---------------------------------------
Everything a child run carries (params, metrics with their steps, artifact bytes)
is derived deterministically from its result files, and a sha256 of that payload
is stored in the tag ``apc.content_hash``, which is written *last* (it marks the
run complete).  On every sync, under the lock:

* payload hash equal to the stored one  -> the run is left alone ("unchanged");
* hash differs, or the run is incomplete -> a new run is created and fully
  logged, then the old one is deleted ("updated").  The number of active runs
  never changes.

Replacement (rather than logging into the old run) is deliberate: MLflow forbids
changing a logged param, and it cannot delete metric history, so re-logging
per-iteration statistics of a rerun with fewer iterations would leave stale
steps behind.  The old run is soft-deleted (``mlflow gc`` purges it).  The run id
of a child therefore changes when its result changes; look runs up by
``apc.cell_key``.  The parent is never replaced: its params come from the config,
which its hash pins; its artifacts (plots) are re-logged in place.

Concurrency
-----------
All reads and writes of one sync happen while holding a :class:`filelock.FileLock`
on ``<db file>.lock`` for ``sqlite:`` URIs (``<outdir>/.mlflow-sync.lock``
otherwise), so concurrent syncs (e.g. four Snakemake jobs) are serialised: no
duplicate runs, no "database is locked".  Duplicates that exist anyway (e.g.
from a crash between create and delete) are healed: the newest complete run is
kept, the others deleted.
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

SCHEMA_VERSION = "1"  # bump when the mapping files -> params/metrics changes (forces replacement)
LOCK_TIMEOUT_S = 900.0
_HTTP_ENV_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAM_LEN = 6000
_KEY_RE = re.compile(r"[^\w\-. /]")


class TrackingError(RuntimeError):
    """The tracking store could not be reached or written."""


# ----------------------------------------------------------------------------- helpers
def config_hash(config: dict) -> str:
    """Stable 12-hex-digit hash of a resolved config dict (key order does not matter)."""
    blob = json.dumps(config, sort_keys=True, default=str, separators=(",", ":"))
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
    rule: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: list[tuple[str, float, int]] = field(default_factory=list)  # (key, value, step)
    artifacts: list[tuple[Path, str | None]] = field(default_factory=list)  # (file, artifact dir)

    def param(self, **kw: Any) -> None:
        for k, v in kw.items():
            if v is not None:
                self.params[_key(k)] = _pval(v)

    def metric(self, key: str, value: Any, step: int = 0) -> None:
        x = _num(value)
        if x is not None:
            self.metrics.append((_key(key), x, int(step)))

    def content_hash(self) -> str:
        h = hashlib.sha256(SCHEMA_VERSION.encode())
        h.update(json.dumps([self.cell_key, self.rule, sorted(self.params.items()),
                             [(k, repr(v), s) for k, v, s in self.metrics]]).encode())
        for path, adir in self.artifacts:
            h.update(f"\0{adir}/{path.name}\0".encode())
            h.update(path.read_bytes())
        return h.hexdigest()[:16]


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _cell_name(path: Path) -> tuple[str, int, int] | None:
    m = re.fullmatch(r"(?P<method>.+)-k(?P<k>\d+)-s(?P<seed>-?\d+)", path.stem if path.suffix else path.name)
    return (m["method"], int(m["k"]), int(m["seed"])) if m else None


def collect_records(outdir: str | os.PathLike) -> list[_Record]:
    """Scan ``outdir`` and build one record per job result (sorted by cell key)."""
    out = Path(outdir)
    thresholds = out / "thresholds.json"
    sparsity = read_json(thresholds).get("sparsity") if thresholds.exists() else None
    model = dataset = None
    records: list[_Record] = []

    for path in sorted(out.glob("patterns/*/extract.json")):
        d = read_json(path)
        split = d.get("split", path.parent.name)
        model, dataset = model or d.get("model"), dataset or d.get("dataset")
        r = _Record(f"extract/{split}", d.get("rule", "extract_patterns"))
        r.param(model=d.get("model"), dataset=d.get("dataset"), split=split, seq_len=d.get("seq_len"),
                n_layers=d.get("n_layers"), projections=d.get("projections"), sparsity=sparsity)
        for k in ("n_tokens", "n_windows", "wall_time_s", "store_bytes", "ideal_bytes"):
            r.metric(k, d.get(k))
        for proj, dens in (d.get("density") or {}).items():
            dens = [x for x in dens if _num(x) is not None]
            if dens:
                r.metric(f"density_{proj}_mean", sum(dens) / len(dens))
            for layer, x in enumerate(dens):
                r.metric(f"density_{proj}", x, step=layer)
        r.artifacts.append((path, None))
        records.append(r)

    for path in sorted(out.glob("clusters/*/*/*/centroids.json")):
        d = read_json(path)
        proj, scope, cell = path.parts[-4], path.parts[-3], path.parts[-2]
        model, dataset = model or d.get("model"), dataset or d.get("dataset")
        r = _Record(f"cluster/{proj}/{scope}/{cell}", d.get("rule", "cluster"))
        r.param(model=d.get("model"), dataset=d.get("dataset"), projection=d.get("projection", proj),
                scope=d.get("scope", scope), layers=d.get("layers"), method=d.get("method"), k=d.get("k"),
                seed=d.get("seed"), centroid_density=d.get("density"), width=d.get("width"),
                n_train_patterns=d.get("n_train_patterns"), sparsity=sparsity)
        for k in ("iterations", "converged", "wall_time_s", "n_train_patterns"):
            r.metric(k, d.get(k))
        r.metric("centroid_density", d.get("density"))
        per_set = d.get("scope", scope) == "per_layer"
        for h in d.get("history") or []:
            suffix = f"_L{h.get('set', 0)}" if per_set else ""
            for stat in ("objective", "changed", "empty"):
                if stat in h:
                    r.metric(f"{stat}{suffix}", h[stat], step=int(h.get("iteration", 0)))
        r.artifacts.append((path, None))
        npy = path.with_suffix(".npy")
        if npy.exists():
            r.artifacts.append((npy, None))
        records.append(r)

    for path in sorted(out.glob("eval/*/*/*.csv")):
        proj, scope = path.parts[-3], path.parts[-2]
        parsed = _cell_name(path)
        rows = _read_csv(path)
        side = out / "clusters" / proj / scope / path.stem / "centroids.json"
        sd = read_json(side) if side.exists() else {}
        first = rows[0] if rows else {}
        r = _Record(f"eval/{proj}/{scope}/{path.stem}", "evaluate")
        r.param(model=sd.get("model", model), dataset=sd.get("dataset", dataset),
                projection=first.get("projection", proj), scope=first.get("scope", scope),
                method=first.get("method", parsed[0] if parsed else None),
                k=first.get("k", parsed[1] if parsed else None),
                seed=first.get("seed", parsed[2] if parsed else None),
                layers=sd.get("layers"), centroid_density=sd.get("density"), sparsity=sparsity)
        metric_cols = [c for c in (first.keys() if first else [])
                       if c not in ("split", "layer", "projection", "scope", "method", "k", "seed")]
        for row in rows:
            split = row.get("split", "test")
            for c in metric_cols:
                if row.get("layer") == "all":
                    r.metric(f"{split}_{c}", row.get(c))
                elif c in ("recall", "precision", "f1", "data_density", "centroid_density"):
                    try:
                        r.metric(f"{split}_{c}_by_layer", row.get(c), step=int(row["layer"]))
                    except (KeyError, ValueError):
                        pass
        r.artifacts.append((path, None))
        records.append(r)

    dense = out / "ppl" / "dense.json"
    if dense.exists():
        d = read_json(dense)
        r = _Record("ppl/dense", d.get("rule", "ppl_dense"))
        r.param(mode=d.get("mode", "dense"), model=d.get("model"), dataset=d.get("dataset"))
        for k in ("ppl", "nll", "tokens", "windows", "wall_time_s"):
            r.metric(k, d.get(k))
        r.artifacts.append((dense, None))
        records.append(r)

    for path in sorted(out.glob("ppl/sparse-*.json")):
        d = read_json(path)
        pset = d.get("pset", path.stem[len("sparse-"):])
        r = _Record(f"ppl/sparse-{pset}", d.get("rule", "ppl_sparse"))
        r.param(mode=d.get("mode", "sparse"), pset=pset, projections=d.get("projections"),
                model=d.get("model"), dataset=d.get("dataset"), sparsity=sparsity)
        for k in ("ppl", "nll", "tokens", "windows", "wall_time_s"):
            r.metric(k, d.get(k))
        for proj, x in (d.get("kept") or {}).items():
            r.metric(f"kept_{proj}", x)
        r.artifacts.append((path, None))
        records.append(r)

    for path in sorted(out.glob("ppl/*/*/*.json")):
        d = read_json(path)
        pset, scope = path.parts[-3], path.parts[-2]
        r = _Record(f"ppl/{pset}/{scope}/{path.stem}", d.get("rule", "ppl_cell"))
        modes = d.get("modes") or {}
        r.param(pset=d.get("pset", pset), projections=d.get("projections"), method=d.get("method"),
                k=d.get("k"), scope=d.get("scope", scope), seed=d.get("seed"), model=d.get("model"),
                dataset=d.get("dataset"), modes=sorted(modes), sparsity=sparsity)
        for mode, md in sorted(modes.items()):
            for k in ("ppl", "nll", "tokens", "windows", "wall_time_s"):
                r.metric(f"{k}_{mode}", md.get(k))
            for proj, x in (md.get("kept") or {}).items():
                r.metric(f"kept_{mode}_{proj}", x)
        r.artifacts.append((path, None))
        records.append(r)

    keys = [r.cell_key for r in records]
    if len(set(keys)) != len(keys):  # pragma: no cover - layout guarantees uniqueness
        raise ValueError(f"duplicate cell keys in {out}")
    return records


def _parent_record(out: Path, config: dict, tmpdir: Path) -> _Record:
    r = _Record("config", "workflow")
    flat = _flatten(config)
    for k, v in flat.items():
        r.param(**{k: "" if v is None else v})
    cfg = tmpdir / "config.json"
    write_json(cfg, config)
    r.artifacts.append((cfg, None))
    thr = out / "thresholds.json"
    if thr.exists():
        for proj, rows in (read_json(thr).get("projections") or {}).items():
            for row in rows:
                r.metric(f"threshold_{proj}", row.get("threshold"), step=int(row.get("layer", 0)))
                r.metric(f"achieved_sparsity_{proj}", row.get("achieved_sparsity"), step=int(row.get("layer", 0)))
        r.artifacts.append((thr, None))
    for png in sorted((out / "plots").glob("*.png")):
        r.artifacts.append((png, "plots"))
    return r


# ----------------------------------------------------------------------------- MLflow I/O
def _lock_path(uri: str, out: Path) -> Path:
    db = _sqlite_path(uri)
    if db is not None:
        return db.with_name(db.name + ".lock")
    return out / ".mlflow-sync.lock"


def _search_all(client, exp_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([exp_id], filter_string=filter_string, max_results=1000, page_token=token)
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
    """A child run is complete once marked FINISHED, which happens after everything is logged."""
    return run.info.status == "FINISHED"


def sync_results(outdir: str | os.PathLike, config: dict, *, tracking_uri: str, experiment: str,
                 git_info: dict | None = None) -> dict:
    """Upsert the results tree under ``outdir`` into MLflow (see module docstring).

    Returns ``{"parent": run_id, "children": n, "created": n, "updated": n,
    "unchanged": n, "experiment_id": id}`` (counts are of child runs).  Raises
    :class:`TrackingError` naming ``tracking_uri`` if the store is unreachable or
    rejects a write; result files are only read, never written.
    """
    out = Path(outdir).resolve()
    if not out.is_dir():
        raise FileNotFoundError(f"results directory not found: {out}")
    ginfo = git_info if git_info is not None else _git_info(Path(__file__).resolve().parent)
    commit = str(ginfo.get("commit") or "unknown")
    dirty = ginfo.get("dirty")
    dirty_tag = "unknown" if dirty is None else str(bool(dirty)).lower()
    chash = config_hash(config)

    db = _sqlite_path(tracking_uri)
    if db is not None and not db.parent.is_dir():
        raise TrackingError(f"cannot use MLflow tracking URI {tracking_uri!r}: "
                            f"directory {db.parent} does not exist")
    records = collect_records(out)

    from filelock import FileLock, Timeout

    lock_file = _lock_path(tracking_uri, out)
    t0 = time.time()
    with _http_env():
        client = None
        if db is None:  # probe remote stores before taking a lock in outdir
            client = _client(tracking_uri, experiment)
        try:
            with FileLock(str(lock_file), timeout=LOCK_TIMEOUT_S):
                if client is None:  # sqlite: even the schema creation must be serialised
                    client = _client(tracking_uri, experiment)
                try:
                    result = _sync_locked(client, tracking_uri, experiment, out, config, chash, records,
                                          commit, dirty_tag, db)
                except TrackingError:
                    raise
                except Exception as err:  # noqa: BLE001 - MLflow raises many types
                    raise TrackingError(f"MLflow sync to {tracking_uri!r} failed: "
                                        f"{type(err).__name__}: {err}") from err
        except Timeout as err:
            raise TrackingError(f"timed out after {LOCK_TIMEOUT_S:.0f}s waiting for lock {lock_file} "
                                f"(tracking URI {tracking_uri!r})") from err
    log.info("mlflow sync %s -> %s [%s]: %d children (%d created, %d updated, %d unchanged) in %.1fs",
             out, tracking_uri, experiment, result["children"], result["created"], result["updated"],
             result["unchanged"], time.time() - t0)
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


def _sync_locked(client, uri, experiment, out, config, chash, records, commit, dirty_tag, db) -> dict:
    from mlflow.entities import RunStatus

    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        art = (db.parent / "mlartifacts").resolve().as_uri() if db is not None else None
        exp_id = client.create_experiment(experiment, artifact_location=art)
    else:
        exp_id = exp.experiment_id
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp_id)

    existing = _search_all(client, exp_id, f"tags.`apc.config_hash` = '{chash}'")
    by_key: dict[str, list] = {}
    for run in existing:
        by_key.setdefault(run.data.tags.get("apc.cell_key", ""), []).append(run)
    for runs in by_key.values():  # newest complete first
        runs.sort(key=lambda r: (_complete(r), r.info.start_time or 0), reverse=True)

    base_tags = {"apc.config_hash": chash, "apc.git_commit": commit, "apc.git_dirty": dirty_tag,
                 "mlflow.source.git.commit": commit}
    finished = RunStatus.to_string(RunStatus.FINISHED)

    # ---- parent (never replaced; params pinned by the config hash)
    with tempfile.TemporaryDirectory(prefix="apc-mlflow-") as tmp:
        prec = _parent_record(out, config, Path(tmp))
        phash = prec.content_hash()
        parents = by_key.pop("config", [])
        if parents:
            parent = parents[0]
            for dup in parents[1:]:
                client.delete_run(dup.info.run_id)
            parent_id = parent.info.run_id
            if parent.data.tags.get("apc.content_hash") != phash:
                _log_record(client, parent_id, prec, {**base_tags, "apc.outdir": str(out)})
                client.set_tag(parent_id, "apc.content_hash", phash)
            if parent.info.status != finished:
                client.set_terminated(parent_id, finished)
        else:
            run = client.create_run(exp_id, run_name=f"apc-{chash}",
                                    tags={**base_tags, "apc.rule": "workflow", "apc.cell_key": "config"})
            parent_id = run.info.run_id
            _log_record(client, parent_id, prec, {"apc.outdir": str(out)})
            client.set_tag(parent_id, "apc.content_hash", phash)
            client.set_terminated(parent_id, finished)

    # ---- children
    created = updated = unchanged = 0
    for rec in records:
        h = rec.content_hash()
        runs = by_key.pop(rec.cell_key, [])
        keep = runs[0] if runs and _complete(runs[0]) and runs[0].data.tags.get("apc.content_hash") == h else None
        for dup in runs:
            if keep is not None and dup is not keep:
                client.delete_run(dup.info.run_id)
        if keep is not None:
            if keep.data.tags.get("mlflow.parentRunId") != parent_id:
                client.set_tag(keep.info.run_id, "mlflow.parentRunId", parent_id)
            unchanged += 1
            continue
        run = client.create_run(exp_id, run_name=rec.cell_key, tags={
            **base_tags, "apc.rule": rec.rule, "apc.cell_key": rec.cell_key, "apc.content_hash": h,
            "mlflow.parentRunId": parent_id})
        _log_record(client, run.info.run_id, rec, {})
        client.set_terminated(run.info.run_id, finished)  # completion marker, written last
        for old in runs:
            client.delete_run(old.info.run_id)
        if runs:
            updated += 1
        else:
            created += 1
    stale = sum(len(v) for v in by_key.values())
    if stale:
        log.info("mlflow: %d run(s) of config %s have no result file any more; left as they are", stale, chash)
    return {"parent": parent_id, "experiment_id": exp_id, "children": len(records),
            "created": created, "updated": updated, "unchanged": unchanged}
