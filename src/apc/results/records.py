"""What each MLflow run of a sweep carries, built from its result files only (no MLflow here).

A :class:`Record` holds one run's params, metrics (with steps), tags, artifacts and time span,
and its content hash (tag ``apc.content_hash``): a sha256 of that payload, JSON artifacts taken
without the fields that only say when, how fast or in which batch a job ran.
:func:`cell_records`, :func:`frontier_records` and :func:`study_record` build the records of
the current sweep, listed from the resolved config by :func:`apc.results.inputs.sweep_files`;
:mod:`apc.results.tracking` writes them to MLflow.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apc.common.atomic import read_json, write_json
from apc.common.layout import Layout
from apc.results.inputs import sweep_files

__all__ = ["SCHEMA_VERSION", "SWEEP_KEYS", "Record", "shared_settings", "study_key", "cell_records",
           "frontier_records", "study_record"]

SCHEMA_VERSION = "5"  # bump when the mapping files -> params/metrics changes (forces replacement)
_MAX_PARAM_LEN = 6000
_KEY_RE = re.compile(r"[^\w\-. /]")


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


@dataclass
class Record:
    """Everything one run will carry, derived from result files only."""

    cell_key: str
    name: str
    kind: str = "cell"  # tag apc.kind: "cell", "experts" or "frontier"
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


def _ppl_metrics(r: Record, prefix: str, result: dict, dense: dict | None, proj: str | None = None) -> None:
    """``{prefix}``, ``_lo``, ``_hi``, the paired ratio to dense, the KL from dense and top-1 agreement
    (with intervals; a bound without an interval is not logged) and the kept share of ``proj``."""
    from apc.results.summary import interval_columns

    for k, v in interval_columns(prefix, result, dense).items():
        r.metric(k, v)
    kept = result.get("kept") or {}
    if proj is not None and proj in kept:
        r.metric("kept" + prefix[len("ppl"):], kept[proj])


def cell_records(config: dict) -> tuple[list[Record], dict | None]:
    """One record per cell of the current sweep (sorted by key), and the dense result if present.

    Missing result files of a cell are skipped (a cell of a partly finished run carries
    what exists)."""
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
        r = Record(cell.key, cell.key)
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


def expert_records(config: dict) -> list[Record]:
    """One record per neuron-experts cell (:mod:`apc.common.neuron_experts`), keyed ``experts/{proj}/s{S}-e{E}``:
    the experts' sizes, train and test coverage and density of every router and k (mean over layers), the
    router FLOPs shares; artifact: the cell's report.  Missing reports are skipped."""
    files = sweep_files(config)
    out = []
    for cell, path in zip(files.expert_cells, map(Path, files.experts_reports)):
        if not path.exists():
            continue
        d = read_json(path)
        r = Record(cell.key, cell.key, kind="experts")
        r.param(projection=cell.proj, method="experts", shared=cell.shared, n_experts=cell.n,
                markers=d.get("markers"))
        for k in ("shared_share", "n_experts", "size", "width"):
            r.metric(k, d.get(k))
        for router, share in (d.get("router_flops_share") or {}).items():
            r.metric(f"router_flops_share_{router}", share)
        for router, by_k in (d.get("total") or {}).items():
            for k, m in by_k.items():
                for stat, v in m.items():
                    r.metric(f"test_{router}_k{k}_{stat}", v)
        rows = d.get("layers") or []
        for router in (rows[0]["train"] if rows else {}):
            for k in rows[0]["train"][router]:
                vals = [x["train"][router][k]["coverage"] for x in rows]
                r.metric(f"train_{router}_k{k}_coverage", sum(vals) / len(vals))
        r.metric("fit_seconds", sum(x.get("seconds", 0.0) for x in rows))
        r.times(None, path.stat().st_mtime)
        r.artifacts.append((path, "experts"))
        out.append(r)
    return sorted(out, key=lambda r: r.cell_key)


def frontier_records(config: dict, dense: dict | None) -> list[Record]:
    """One record per frontier point of the current config (sorted by key; missing points skipped).

    Named and keyed ``frontier/{pset}/{line}/{share}`` (:class:`apc.common.frontier.Point`), tag
    ``apc.frontier_cells`` = the clustering cell keys the point uses (``proj=key``, ``;``-joined; empty
    for threshold and random).  Metrics: perplexity with interval and paired ratio to dense, KL from
    dense and top-1 agreement (with intervals), units,
    tokens, kept share, FLOPs share of each product, predictor FLOPs share, compute share, the batch
    view (``union_b{B}``, ``grouped_b{B}``); artifacts: the point and the
    predictor reports it used.
    """
    files = sweep_files(config)
    out = []
    for point, path in zip(files.points, map(Path, files.frontier)):
        if not path.exists():
            continue
        d = read_json(path)
        r = Record(point.key, point.key, kind="frontier",
                    tags={"apc.frontier_cells": ";".join(f"{q}={k}" for q, k in sorted((d.get("cells") or {}).items()))})
        r.param(pset=d["pset"], line=d["line"], family=d["family"], mode=d["mode"], projections=d["projections"],
                model=d.get("model"), dataset=d.get("dataset"))
        _ppl_metrics(r, "ppl", d, d.get("dense") or dense)  # griffin: dense on its own (later) tokens
        for k in ("share", "tokens", "windows", "units", "kept_share", "ffn_flops_share", "predictor_flops_share",
                  "rotation_flops_share", "compute_share"):
            r.metric(k, d.get(k))
        from apc.results.frontier import point_columns

        for k, v in point_columns(d).items():  # FLOPs per product, batch view, time shares
            r.metric(k, v)
        r.times(d.get("started_at"), d.get("finished_at"))
        r.artifacts.append((path, "frontier"))
        _paired_metrics(r, d, Layout(config["outdir"]).frontier_decision())
        out.append(r)
    return sorted(out, key=lambda r: r.cell_key)


def _paired_metrics(r: Record, point: dict, decision_path: str) -> None:
    """A frontier point's tag ``apc.deployable`` and, where the decision table compares its line at the point's
    share, its paired difference against the best deployable line there (``paired_d_{metric}``, ``_lo``,
    ``_hi``) and the tags ``apc.paired_best`` and ``apc.verdict``."""
    from apc.results.paired import METRICS, deployable

    r.tags["apc.deployable"] = str(deployable(point["line"])).lower()
    rows = _decision_rows(decision_path).get((point["pset"], point["line"]))
    s = f"{float(point['share']):g}"
    if not rows or f"verdict_{s}" not in rows:
        return
    for m in METRICS:
        for suf in ("", "_lo", "_hi"):
            v = rows.get(f"d_{m}_{s}{suf}", "")
            r.metric(f"paired_d_{m}{suf}", float(v) if v not in ("", "NaN") else None)
    r.tags.update({"apc.paired_best": rows.get(f"best_{s}") or "", "apc.verdict": rows[f"verdict_{s}"]})


def _decision_rows(path: str) -> dict[tuple[str, str], dict]:
    """The decision table's rows by ``(pset, line)`` (empty when it was not written)."""
    if not Path(path).exists():
        return {}
    with open(path, newline="") as f:
        return {(row["pset"], row["line"]): row for row in csv.DictReader(f)}


def study_record(config: dict, tmpdir: Path, cells: list[Record]) -> Record:
    """The study run: shared settings, dense and true-sparse references, thresholds, summary, plots (PNG and HTML);
    its time span covers every job of its ``cells`` and references."""
    from apc.results.summary import reference_columns

    lay = Layout(config["outdir"])
    manifest = Path(lay.manifest())
    model = read_json(manifest)["name"] if manifest.exists() else str(config["model"]["name_or_path"])
    data = config["data"]
    corpus = "/".join(filter(None, [data.get("hf_path"), data.get("hf_name")])) if data["source"] == "huggingface" \
        else data["source"]
    r = Record("study", f"{config.get('preset', 'custom')} · {model} · {corpus}")
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
        for plot in sorted([*plots.glob("[!.]*.png"), *plots.glob("[!.]*.html")]):  # static plots, interactive HTML
            r.artifacts.append((plot, "plots"))
    return r
