"""What the cluster lines share (a private module, not a line): their cell pattern, the cell each reads at a
kept share, and the workflow inputs of centroids and predictors."""

from __future__ import annotations

from apc.common.layout import Cell

CELL = r"(?P<scope>per_layer|pooled)\.(?P<method>[A-Za-z0-9_]+)-k(?P<k>\d+)-s(?P<seed>\d+)"


def cell_names(config: dict, predictable: bool = False) -> list[str]:
    """``{scope}.{method}-k{K}-s{S}`` of every frontier cell line (:func:`apc.common.frontier.cell_specs`); with
    ``predictable`` only the cells a cluster predictor is fitted for (not the static mask)."""
    from apc.common.frontier import STATIC, cell_specs

    seed = int(config["predict"]["seed"])
    return [f"{scope}.{method}-k{k}-s{seed}" for scope, method, k in cell_specs(config)
            if not (predictable and method == STATIC)]


def cell_of(spec, proj: str, share: float) -> Cell:
    """The clustering cell a cluster line reads for ``proj`` at kept share ``share``."""
    return Cell(proj, spec.scope, spec.method, spec.k, float(share), spec.seed)


def centroid_inputs(spec, ctx, projections, shares) -> dict:
    """``centroids_{proj}_{j}`` per projection and share j."""
    return {f"centroids_{q}_{j}": ctx.layout.centroids(cell_of(spec, q, s))
            for j, s in enumerate(shares) for q in projections}


def load_centroid_arrays(inputs, projections, j: int) -> tuple[dict, dict]:
    """``({proj: (L, K, W) bool tensor}, {proj: centroid metadata})`` of share j."""
    import torch

    from apc.clustering import load_centroids

    loaded = {q: load_centroids(inputs[f"centroids_{q}_{j}"]) for q in projections}
    return {q: torch.from_numpy(bits) for q, (bits, _) in loaded.items()}, {q: m for q, (_, m) in loaded.items()}

