"""Fit one clustering cell of the study: per-layer (one centroid set per layer) or pooled (one set
for all layers, the paper's protocol) on the train patterns of one projection."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from ..common.atomic import read_json
from ..common.progress import get_logger
from .product import product_meta
from .registry import cluster, method_spec
from .sources import layer_files, pooled, sample_layer, weighted_layer, weighted_pooled

log = get_logger("apc.clustering.cell")

SCOPES = ("per_layer", "pooled")


def fit_cell(patterns_dir: str | Path, proj: str, scope: str, method: str, k: int, seed: int, *,
             layers, density: float, max_iter: int, max_patterns_per_layer: int | None, chunk_size: int,
             device: str = "auto", options: dict | None = None,
             column_norms=None, layer_density=None) -> tuple[torch.Tensor, dict]:
    """Cluster the train patterns in ``patterns_dir`` (a split's pattern store).

    ``method``: the cell's method name; ``options``: its ``cluster.options`` entry, whose
    ``method`` field, when present, names the registered method of a variant
    (:func:`apc.common.methods.method_spec`).  ``apc_weighted`` fits on the stored magnitudes
    (same sampled rows as the binary methods) weighted by ``options["weighting"]``;
    ``output`` weighting needs ``column_norms``, ``(n_layers, width)`` down-projection
    column norms.  ``layers``: ``"all"`` or a list (per-layer scope; pooled always uses every layer).
    ``layer_density``: one density per model layer (an ``allocation: greedy`` variant, per-layer
    scope only; ``density`` is then their mean budget and only recorded).
    Returns ``(centroids (n_sets, rows, width) bool, meta)``: n_sets = len(layers) per layer,
    1 pooled; rows = K, or G*K for ``apc_product`` (``meta`` gains ``product_groups``,
    ``k_per_group``, ``grouping``, ``group_labels``); ``meta`` is the sidecar (parameters,
    convergence, per-iteration history, ``mask_density``: the density of one token's mask).
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
    base, options = method_spec(method, {method: options or {}})
    allocation = options.pop("allocation", "uniform")
    if allocation == "greedy" and (layer_density is None or scope != "per_layer"):
        raise ValueError(f"method {method!r} allocates densities per layer: it needs scope per_layer and the "
                         "per-layer densities (frontier_calibration.json)")
    if layer_density is not None and len(layer_density) != len(all_layers):
        raise ValueError(f"layer_density has {len(layer_density)} values, the model has {len(all_layers)} layers")
    run = dict(method=base, density=density, seed=seed, max_iter=max_iter, device=device,
               chunk_size=chunk_size, **options)
    split = patterns_dir.name
    load_layer, load_pooled = sample_layer, pooled
    if base == "apc_weighted":
        load_layer, load_pooled = _weighted_loaders(patterns_dir, proj, options, column_norms)
    if scope == "pooled":
        chosen = all_layers
        groups = [(0, load_pooled(layer_files(root, split, proj, chosen), max_patterns_per_layer, seed))]
    else:
        files = layer_files(root, split, proj, chosen)
        groups = [(l, load_layer(f, max_patterns_per_layer, seed * 1_000_003 + l)) for l, f in zip(chosen, files)]
    sets, results, history, iterations, converged, n_train = [], [], [], 0, True, 0
    for set_id, data in groups:
        if layer_density is not None:
            run["density"] = float(layer_density[set_id])
        res = cluster(data, k, **run)
        sets.append(res.centroids)
        results.append(res)
        n_train += data.n
        iterations = max(iterations, res.iterations)
        converged = converged and res.converged
        history += [{"set": set_id, **h} for h in res.history]
        log.info("%s %s %s K=%d set %d: %d patterns, %d iterations, converged=%s, objective %s", proj, scope,
                 method, k, set_id, data.n, res.iterations, res.converged,
                 res.history[-1]["objective"] if res.history else "-")
    centroids = torch.stack(sets)
    product = product_meta(results) if base == "apc_product" else {}
    meta = {
        "rule": "cluster", "method": method, "base_method": base, "k": k, "scope": scope, "projection": proj, "layers": chosen,
        "density": float(centroids.float().mean()), "target_density": density, "seed": seed,
        "mask_density": float(centroids.float().mean()) * product.get("product_groups", 1),
        "iterations": iterations, "converged": converged, "n_train_patterns": n_train,
        "max_patterns_per_layer": max_patterns_per_layer, "model": extract["model"], "dataset": extract["dataset"],
        "options": options, "history": history, "allocation": allocation,
        **({"layer_density": [float(d) for d in layer_density]} if layer_density is not None else {}),
        "started_at": started, "finished_at": time.time(), "wall_time_s": time.perf_counter() - t0,
        **product,
    }
    return centroids, meta


def _weighted_loaders(patterns_dir: Path, proj: str, options: dict, column_norms):
    """``(per-layer loader, pooled loader)`` of :class:`WeightedPatterns` for ``apc_weighted``."""
    if not (patterns_dir / proj / "magnitudes").is_dir():
        raise ValueError(f"config key 'extract.magnitudes': apc_weighted needs the magnitudes of projection {proj!r}, "
                         f"not stored in {patterns_dir} (add {proj} to extract.magnitudes)")
    weighting = options.get("weighting", "magnitude")
    if weighting == "output" and column_norms is None:
        raise ValueError("weighting 'output' needs column_norms: the down-projection column norms (model/down_norms.npy)")
    kw = dict(weighting=weighting, column_norms=column_norms)
    return (lambda f, n, seed: weighted_layer(f, n, seed, **kw)), (lambda fs, n, seed: weighted_pooled(fs, n, seed, **kw))
