"""Product-quantised masks (``apc_product``): K^G masks from G * log2(K) bits of cluster id.

The ``width`` neurons of a layer are split into ``G`` equal groups; each
group is clustered on its own with binary APC into ``K`` centroids.  A
token's mask is the union of one centroid per group, each chosen as the
group's nearest (the total distance is the sum of the group distances, so
per-group nearest is the nearest of all K^G masks).

Storage: the centroids of one set are a ``(G * K, width)`` bool array whose
rows ``g*K .. g*K + K - 1`` belong to group ``g`` and are zero outside that
group's neurons, so the usual centroid file ``(n_sets, G * K, width)`` holds
them; the sidecar adds :func:`product_meta` (``product_groups`` = G,
``k_per_group`` = K, ``grouping`` and ``group_labels``, the group of every
neuron per set).  Every product mask has exactly ``round(density * width)``
ones: the groups share that count as evenly as possible.

Groupings (``grouping``): ``contiguous`` (neurons ``[g*W/G, (g+1)*W/G)``) and
``coactivation`` (balanced k-means of the neurons on their standardised
activity over a sample of train tokens, farthest-first seeds from neuron 0,
each pass assigning the closest (neuron, group) pairs first under equal
group sizes; deterministic).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .apc import apc
from .common import ClusterResult, check_inputs
from .data import PackedPatterns
from ..common.device import exact_matmul
from .distance import overlap
from .registry import register

__all__ = ["GROUPINGS", "apc_product", "group_counts", "neuron_groups", "nearest_in_groups", "product_masks",
           "product_meta"]

#: Names accepted by the ``grouping`` option.
GROUPINGS = ("contiguous", "coactivation")


def _check_groups(groups, width: int) -> int:
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups must be a positive integer, got {groups!r}")
    if width % int(groups):
        raise ValueError(f"groups={groups} does not divide the layer width {width}: "
                         "the grouping splits the neurons into equal groups")
    return int(groups)


def group_counts(n_keep: int, groups: int) -> list[int]:
    """Ones per group so that the groups together keep exactly ``n_keep`` (earlier groups take the rest)."""
    base, extra = divmod(int(n_keep), int(groups))
    return [base + (g < extra) for g in range(groups)]


def _balanced_greedy(dist: torch.Tensor, cap: int) -> torch.Tensor:
    """Assign rows of ``dist: (d, G)`` to columns, at most ``cap`` per column, closest pairs first."""
    d, g = dist.shape
    order = torch.argsort(dist.reshape(-1), stable=True).tolist()
    labels = [-1] * d
    room = [cap] * g
    left = d
    for flat in order:
        j, c = divmod(flat, g)
        if labels[j] < 0 and room[c] > 0:
            labels[j], room[c], left = c, room[c] - 1, left - 1
            if left == 0:
                break
    return torch.tensor(labels, dtype=torch.int64)


def neuron_groups(patterns: PackedPatterns, groups: int, grouping: str = "contiguous", *, seed: int = 0,
                  sample_size: int = 8192, max_iter: int = 20, device: str | torch.device = "cpu") -> torch.Tensor:
    """Group label of every neuron, ``(width,) int64``; every group has ``width / groups`` neurons."""
    width = patterns.width
    groups = _check_groups(groups, width)
    labels = torch.arange(width) // (width // groups)
    if grouping == "contiguous" or groups == 1:
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {', '.join(GROUPINGS)}, got {grouping!r}")
        return labels
    if grouping != "coactivation":
        raise ValueError(f"grouping must be one of {', '.join(GROUPINGS)}, got {grouping!r}")
    sample = patterns.subsample(sample_size, seed)
    x = torch.cat(list(sample.chunks(65536, device, torch.float32)))
    x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
    feats = x.t().contiguous()  # (width, s): a neuron's standardised activity over the sampled tokens
    f_sq = (feats * feats).sum(1, keepdim=True)

    def sq_dist(centres: torch.Tensor) -> torch.Tensor:
        return f_sq - 2 * feats @ centres.t() + (centres * centres).sum(1)[None, :]

    seeds = [0]  # farthest-first seeds from neuron 0
    while len(seeds) < groups:
        seeds.append(int(sq_dist(feats[seeds]).min(dim=1).values.argmax()))
    centres = feats[seeds]
    labels = None
    for _ in range(max_iter):
        new = _balanced_greedy(sq_dist(centres).cpu(), width // groups)
        if labels is not None and torch.equal(new, labels):
            break
        labels = new
        onehot = torch.nn.functional.one_hot(labels.to(feats.device), groups).float()
        centres = (onehot.t() @ feats) / onehot.sum(0)[:, None]
    return labels


def nearest_in_groups(scores: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group best of ``scores: (m, G*K)`` overlaps: ``(best (m, G), global row index (m, G) int64)``.

    Ties go to the lowest index; ``groups=1`` is the plain nearest centroid.
    """
    m, gk = scores.shape
    best, idx = scores.view(m, groups, gk // groups).max(dim=2)
    rows = idx + torch.arange(groups, device=idx.device)[None, :] * (gk // groups)
    return best, rows


def product_masks(x: torch.Tensor, centroids: torch.Tensor, groups: int) -> torch.Tensor:
    """Masks ``(m, width) bool``: per group, the centroid of largest overlap with ``x``.

    ``x: (m, width)`` bits (0/1) or non-negative weights; ``centroids: (G*K,
    width)`` laid out by group (see the module docstring).  One matrix product.
    """
    c = centroids.to(device=x.device, dtype=torch.float32)
    if c.shape[0] % groups:
        raise ValueError(f"centroids have {c.shape[0]} rows, not a multiple of groups={groups}")
    with exact_matmul(x.device):
        _, rows = nearest_in_groups(overlap(x.float(), c), groups)
    picked = c.index_select(0, rows.reshape(-1)).view(x.shape[0], groups, -1)
    return picked.amax(dim=1) > 0.5


@register("apc_product")
def apc_product(patterns: PackedPatterns, k: int, *, density: float, groups: int = 2, grouping: str = "contiguous",
                seed: int = 42, device: str | torch.device = "auto", chunk_size: int = 65536,
                **apc_options) -> ClusterResult:
    """Binary APC per neuron group; ``k`` centroids per group, ``(groups * k, width)`` bool centroids.

    ``assignments`` is ``(n, groups)``: each pattern's centroid row per group;
    ``group_labels`` is ``(width,)`` int64, the group of every neuron.
    Other options go to :func:`apc.clustering.apc.apc` for every group.
    """
    t0 = time.perf_counter()
    n_keep, dev = check_inputs(patterns, k, density, chunk_size=chunk_size, device=device)
    groups = _check_groups(groups, patterns.width)
    labels = neuron_groups(patterns, groups, grouping, seed=seed, device=dev)
    size = patterns.width // groups
    centroids = torch.zeros((groups * k, patterns.width), dtype=torch.bool)
    assignments, history, iterations, converged = [], [], 0, True
    for g, keep in enumerate(group_counts(n_keep, groups)):
        cols = torch.nonzero(labels == g)[:, 0]
        res = apc(patterns.select_columns(cols.numpy(), chunk_size), k, density=keep / size, seed=seed,
                  device=dev, chunk_size=chunk_size, **apc_options)
        centroids[g * k : (g + 1) * k, cols] = res.centroids
        assignments.append(res.assignments + g * k)
        history += [{"group": g, **h} for h in res.history]
        iterations, converged = max(iterations, res.iterations), converged and res.converged
    return ClusterResult(
        centroids=centroids, iterations=iterations, converged=converged, history=history,
        assignments=torch.stack(assignments, dim=1), method="apc_product", density=float(density), seed=seed,
        options=dict(groups=groups, grouping=grouping, k_per_group=k, **apc_options),
        seconds=round(time.perf_counter() - t0, 3), group_labels=labels,
    )


def product_meta(results: list[ClusterResult]) -> dict:
    """Sidecar keys of a product cell from its per-set results (one per layer, or one pooled)."""
    first = results[0].options
    return {"product_groups": int(first["groups"]), "k_per_group": int(first["k_per_group"]),
            "grouping": first["grouping"], "group_labels": [r.group_labels.tolist() for r in results]}
