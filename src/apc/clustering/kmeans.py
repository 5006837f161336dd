"""Standard binary k-means: Hamming assignment, majority-vote update.

The baseline the paper calls "standard binary clustering": same seeding
(uncapped data points) and the same stopping rule as APC, but centroids are
``mean >= 0.5`` of their members, so their density is whatever the vote
gives.  ``kmeans_capped`` keeps the Hamming assignment but caps each
centroid to the top ``round(density * width)`` mean positions, for a
comparison at equal density.
"""

from __future__ import annotations

import time

import torch

from .apc import initial_points
from .common import ClusterResult, cap_points, check_inputs, compute_dtype, default_block_rows, top_n_mask
from .data import PackedPatterns
from .engine import lloyd, resolve_accumulate
from .init import activity_frequency
from .lowp import resolve_matmul
from .registry import register

__all__ = ["kmeans", "kmeans_capped", "majority_update"]


def majority_update(sums: torch.Tensor, counts: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
    """``mean >= 0.5`` per position (exact: ``2 * sum >= count``); empty clusters keep ``prev``."""
    new = (sums.to(torch.int64) * 2) >= counts.to(torch.int64)[:, None]
    empty = counts == 0
    return torch.where(empty[:, None], prev, new)


def _run(
    patterns: PackedPatterns, k: int, *, density: float, capped: bool, name: str, seed: int = 42,
    max_iter: int = 50, device: str | torch.device = "auto", chunk_size: int = 65536, init: str = "random",
    min_zero_share: float = 0.4, init_sample: int | None = None, init_centroids=None, dtype: str = "float32",
    block_rows: int | None = None, accumulate: str = "auto", matmul: str = "auto", distributed: bool = False,
) -> ClusterResult:
    t0 = time.perf_counter()
    n_keep, dev = check_inputs(patterns, k, density, max_iter=max_iter, chunk_size=chunk_size, device=device)
    cdtype = compute_dtype(dtype, dev)
    accumulate = resolve_accumulate(accumulate, dev)
    matmul = resolve_matmul(matmul, dev, cdtype)
    block = int(block_rows or default_block_rows(patterns.width, dev, chunk_size))
    if capped:
        freq = activity_frequency(patterns, dev, chunk_size=chunk_size, seed=seed)
        to_centroid = lambda p: cap_points(p, n_keep, freq)  # noqa: E731
        update = lambda s, c, prev: top_n_mask(s.to(torch.int64) if s.is_floating_point() else s, n_keep)  # noqa: E731  (one count per row)
        reseed = lambda p, f: cap_points(p, n_keep, f)  # noqa: E731
    else:
        to_centroid = lambda p: p.bool()  # noqa: E731
        update = majority_update
        reseed = lambda p, f: p.bool()  # noqa: E731
    start = initial_points(
        patterns, k, init=init, seed=seed, device=dev, kind="hamming", min_zero_share=min_zero_share,
        init_sample=init_sample, to_centroid=to_centroid, chunk_size=chunk_size, given=init_centroids,
    )
    centroids, assignments, history, converged = lloyd(
        patterns, start, kind="hamming", update=update, reseed=reseed, max_iter=max_iter,
        chunk_size=chunk_size, block_rows=block, dtype=cdtype, accumulate_method=accumulate, matmul=matmul,
        distributed=bool(distributed), name=name,
    )
    return ClusterResult(
        centroids=centroids, iterations=len(history), converged=converged, history=history,
        assignments=assignments, method=name, density=float(density), seed=seed,
        options=dict(init=init if init_centroids is None else "given", min_zero_share=min_zero_share,
                     init_sample=init_sample, dtype=str(dtype), max_iter=max_iter, chunk_size=chunk_size,
                     accumulate=accumulate, matmul=matmul),
        seconds=round(time.perf_counter() - t0, 3),
    )


@register("kmeans")
def kmeans(patterns: PackedPatterns, k: int, **options) -> ClusterResult:
    """Binary k-means (Hamming, majority vote).  ``density`` is validated and recorded, not enforced.

    Options (all keyword): ``density``, ``seed=42``, ``max_iter=50``, ``device="auto"``,
    ``chunk_size=65536``, ``init="random"``, ``min_zero_share=0.4``, ``init_sample=None``,
    ``init_centroids=None``, ``dtype="float32"``, ``block_rows=None``, ``accumulate="auto"``,
    ``matmul="auto"``, ``distributed=False`` (see :func:`apc.clustering.apc.apc`).
    """
    return _run(patterns, k, capped=False, name="kmeans", **options)


@register("kmeans_capped")
def kmeans_capped(patterns: PackedPatterns, k: int, **options) -> ClusterResult:
    """Hamming k-means whose centroids keep exactly ``round(density * width)`` top-mean positions.

    Same options as :func:`kmeans`.
    """
    return _run(patterns, k, capped=True, name="kmeans_capped", **options)
