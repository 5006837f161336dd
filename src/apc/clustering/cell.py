"""Fit one clustering cell of the study: per-layer (one centroid set per layer) or pooled (one set
for all layers, the paper's protocol) on the train patterns of one projection."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..common.atomic import read_json
from ..common.progress import get_logger
from .registry import cluster
from .sources import layer_files, pooled, sample_layer

log = get_logger("apc.clustering.cell")

SCOPES = ("per_layer", "pooled")


def fit_cell(patterns_dir: str | Path, proj: str, scope: str, method: str, k: int, seed: int, *,
             layers, density: float, max_iter: int, max_patterns_per_layer: int | None, chunk_size: int,
             device: str = "auto", options: dict | None = None) -> tuple[torch.Tensor, dict]:
    """Cluster the train patterns in ``patterns_dir`` (a split's pattern store).

    ``layers``: ``"all"`` or a list (per-layer scope; pooled always uses every layer).
    Returns ``(centroids (n_sets, K, width) bool, meta)``: n_sets = len(layers) per layer,
    1 pooled; ``meta`` is the sidecar (parameters, convergence, per-iteration history).
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}; known: {', '.join(SCOPES)}")
    started = time.time()
    t0 = time.perf_counter()
    patterns_dir = Path(patterns_dir)
    root = patterns_dir.parent
    extract = read_json(patterns_dir / "extract.json")
    all_layers = list(range(extract["n_layers"]))
    chosen = all_layers if layers == "all" else [int(l) for l in layers]
    bad = [l for l in chosen if l not in all_layers]
    if bad:
        raise ValueError(f"config key 'cluster.layers': layers {bad} do not exist (the model has {len(all_layers)})")
    options = dict(options or {})
    run = dict(method=method, density=density, seed=seed, max_iter=max_iter, device=device,
               chunk_size=chunk_size, **options)
    split = patterns_dir.name
    if scope == "pooled":
        chosen = all_layers
        groups = [(0, pooled(layer_files(root, split, proj, chosen), max_patterns_per_layer, seed))]
    else:
        files = layer_files(root, split, proj, chosen)
        groups = [(l, sample_layer(f, max_patterns_per_layer, seed * 1_000_003 + l)) for l, f in zip(chosen, files)]
    sets, history, iterations, converged, n_train = [], [], 0, True, 0
    for set_id, data in groups:
        res = cluster(data, k, **run)
        sets.append(res.centroids)
        n_train += data.n
        iterations = max(iterations, res.iterations)
        converged = converged and res.converged
        history += [{"set": set_id, **h} for h in res.history]
        log.info("%s %s %s K=%d set %d: %d patterns, %d iterations, converged=%s, objective %s", proj, scope,
                 method, k, set_id, data.n, res.iterations, res.converged,
                 res.history[-1]["objective"] if res.history else "-")
    centroids = torch.stack(sets)
    meta = {
        "rule": "cluster", "method": method, "k": k, "scope": scope, "projection": proj, "layers": chosen,
        "density": float(centroids.float().mean()), "target_density": density, "seed": seed,
        "iterations": iterations, "converged": converged, "n_train_patterns": n_train,
        "max_patterns_per_layer": max_patterns_per_layer, "model": extract["model"], "dataset": extract["dataset"],
        "options": options, "history": history,
        "started_at": started, "finished_at": time.time(), "wall_time_s": time.perf_counter() - t0,
    }
    return centroids, meta
