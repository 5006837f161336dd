"""Score one clustering cell's centroids on the stored patterns of each split: a tidy table of
per-layer and pooled (``layer = "all"``) coverage metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from apc.clustering.sources import layer_files, sample_layer
from apc.common.layout import Cell
from apc.common.progress import get_logger
from apc.evaluation.metrics import coverage_sums, metrics_from_sums

log = get_logger("apc.evaluation.evaluate")


def evaluate_cell(cell: Cell, centroids: np.ndarray, layers: list[int], pattern_dirs: dict[str, str | Path], *,
                  device: str = "auto", chunk_size: int = 16384) -> list[dict]:
    """Rows ``{split, layer, projection, scope, method, k, density, seed, **metrics}`` for every split.

    ``centroids: (n_sets, K, width) bool`` (n_sets = len(layers), or 1 shared by all layers);
    ``pattern_dirs: {split: pattern store folder}``.  Every stored token is scored, streamed in chunks.
    """
    keys = {"projection": cell.proj, "scope": cell.scope, "method": cell.method, "k": int(cell.k),
            "density": float(cell.density), "seed": int(cell.seed)}
    if len(centroids) not in (1, len(layers)):
        raise ValueError(f"{len(centroids)} centroid sets for {len(layers)} layers (expected 1 or one per layer)")
    rows = []
    for split, folder in pattern_dirs.items():
        folder = Path(folder)
        total = 0
        for i, (layer, path) in enumerate(zip(layers, layer_files(folder.parent, folder.name, cell.proj, layers))):
            data = sample_layer(path, None, 0)
            if data.width != centroids.shape[-1]:
                raise ValueError(f"{path}: width {data.width} differs from the centroids' width {centroids.shape[-1]}")
            sums = coverage_sums(data, centroids[i if len(centroids) > 1 else 0], device=device, chunk_size=chunk_size)
            total = total + sums
            rows.append({"split": split, "layer": layer, **keys, **metrics_from_sums(sums)})
        rows.append({"split": split, "layer": "all", **keys, **metrics_from_sums(total)})
        m = rows[-1]
        log.info("%s %s: recall %.4f precision %.4f centroid density %.4f (data density %.4f)", split, cell.key,
                 m["recall"], m["precision"], m["centroid_density"], m["data_density"])
    return rows
