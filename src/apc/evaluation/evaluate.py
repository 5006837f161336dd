"""Score one clustering cell's centroids on the stored patterns of each split: a tidy table of
per-layer and pooled (``layer = "all"``) coverage metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apc.clustering.sources import layer_files, sample_layer, weighted_layer
from apc.common.layout import Cell
from apc.common.progress import get_logger
from apc.evaluation.metrics import coverage_sums, metrics_from_sums

log = get_logger("apc.evaluation.evaluate")

#: Base seed of the evaluation samples (``max_tokens``): apart from the clustering's fit samples
#: (cell seed * 1_000_003 + layer), so a sample holds fitted rows only in their share of the split.
EVAL_SAMPLE_SEED = 7_777_777


def evaluate_cell(cell: Cell, centroids: np.ndarray, layers: list[int], pattern_dirs: dict[str, str | Path], *,
                  groups: int = 1, weighting: str | None = None, column_norms: np.ndarray | None = None,
                  device: str = "auto", chunk_size: int = 16384, max_tokens: dict[str, int | None] | None = None,
                  sample_seed: int = EVAL_SAMPLE_SEED) -> list[dict]:
    """Rows ``{split, layer, projection, scope, method, k, groups, density, seed, **metrics}`` for every split.

    ``centroids: (n_sets, G*K, width) bool`` (n_sets = len(layers), or 1 shared by all layers;
    ``groups`` = G > 1 for a product cell, rows laid out by group, K = ``cell.k`` per group);
    ``pattern_dirs: {split: pattern store folder}``.  Every stored token is scored, streamed in chunks,
    unless ``max_tokens[split]`` caps it: then a seeded uniform sample of that many tokens per layer
    (seed ``sample_seed + layer``).
    Where the store holds the projection's magnitudes, rows gain ``mass_recall`` (weights |x|).
    ``weighting`` (``magnitude`` | ``output``, as the cell was fitted; needs the magnitudes) assigns each
    token the centroid that misses the least weight |x| (times ``column_norms[layer]``, ``(n_layers,
    width)``, for ``output``); None assigns by the pattern.
    """
    keys = {"projection": cell.proj, "scope": cell.scope, "method": cell.method, "k": int(cell.k),
            "groups": int(groups), "density": float(cell.density), "seed": int(cell.seed)}
    if weighting not in (None, "magnitude", "output"):
        raise ValueError(f"weighting must be None, 'magnitude' or 'output', got {weighting!r}")
    if weighting == "output" and column_norms is None:
        raise ValueError("weighting 'output' needs column_norms (the down-projection column norms)")
    if len(centroids) not in (1, len(layers)):
        raise ValueError(f"{len(centroids)} centroid sets for {len(layers)} layers (expected 1 or one per layer)")
    rows = []
    for split, folder in pattern_dirs.items():
        folder = Path(folder)
        total = 0
        has_mags = (folder / cell.proj / "magnitudes").is_dir()
        if weighting is not None and not has_mags:
            raise ValueError(f"config key 'extract.magnitudes': weighted assignment needs the magnitudes of "
                             f"projection {cell.proj!r}, not stored in {folder}")
        for i, (layer, path) in enumerate(zip(layers, layer_files(folder.parent, folder.name, cell.proj, layers))):
            cap = (max_tokens or {}).get(split)
            data = (weighted_layer if has_mags else sample_layer)(path, cap, sample_seed + int(layer))
            if data.width != centroids.shape[-1]:
                raise ValueError(f"{path}: width {data.width} differs from the centroids' width {centroids.shape[-1]}")
            scale = np.asarray(column_norms)[layer] if weighting == "output" else None
            sums = coverage_sums(data, centroids[i if len(centroids) > 1 else 0], groups=groups,
                                 assign_by="pattern" if weighting is None else "weights", assign_scale=scale,
                                 device=device, chunk_size=chunk_size)
            total = total + sums
            rows.append({"split": split, "layer": layer, **keys, **metrics_from_sums(sums)})
        rows.append({"split": split, "layer": "all", **keys, **metrics_from_sums(total)})
        m = rows[-1]
        log.info("%s %s: recall %.4f precision %.4f centroid density %.4f (data density %.4f)", split, cell.key,
                 m["recall"], m["precision"], m["centroid_density"], m["data_density"])
    return rows
