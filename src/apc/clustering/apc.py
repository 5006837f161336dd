"""Activation-pattern clustering (APC), the method of arXiv 2507.14179.

* distance: activation-aware, ``d(x, c) = |x AND NOT c|`` (missed active neurons);
* update: per-cluster member mean, optionally blended with the previous
  centroid (``(1 - blend) * mean + blend * prev``), then the top
  ``round(density * width)`` positions are kept, so every centroid has
  exactly the capped density (ties -> lowest position);
* assignment: argmin (default) or the paper's capacity-limited greedy
  (``assignment="balanced"``, at most ``ceil(ceil(m / K) * slack)`` patterns
  per centroid and chunk of ``m`` patterns);
* init: random data points with at least ``min_zero_share`` zeros
  (``init="random"``) or k-means++ with the activation-aware distance
  (``init="kmeans++"``); the seeds are capped to the density;
* empty clusters are re-seeded from the worst-covered patterns;
* stop when no assignment changes, or after ``max_iter`` assignment passes.

Weighted APC (``apc_weighted``) runs the same loop on the weights ``w`` of
:class:`WeightedPatterns` instead of the bits: the distance is the weight the
centroid misses, ``d_w(x, c) = sum_j w_j [c_j = 0] = rowsum(w) - w.c``, and
the update keeps the top positions of the members' mean weight.  With
``w`` equal to the bits (1 on active neurons, 0 elsewhere) it is binary APC,
step for step.
"""

from __future__ import annotations

import time

import torch

from .common import ClusterResult, cap_points, check_inputs, compute_dtype, default_block_rows, top_n_mask
from .data import PackedPatterns, WeightedPatterns
from .engine import ASSIGNMENTS, lloyd, resolve_accumulate
from .lowp import resolve_matmul
from .init import INITS, activity_frequency, init_kmeanspp, init_random_points
from .registry import register

__all__ = ["WEIGHTINGS", "apc", "apc_balanced", "apc_weighted", "capped_update", "initial_points"]

#: Names accepted by the ``weighting`` option of ``apc_weighted``: ``magnitude`` (w = |x|) and
#: ``output`` (w = |x_j| * ||W_down[:, j]||, for ``down_in``).
WEIGHTINGS = ("magnitude", "output")


def capped_update(sums: torch.Tensor, counts: torch.Tensor, prev: torch.Tensor, n_keep: int, blend: float = 0.0) -> torch.Tensor:
    """New centroids: top ``n_keep`` positions of the (blended) member mean, ``(K, d)`` bool.

    Without ``blend`` the ranking of a row's mean is the ranking of its
    integer sums (one count divides the whole row), so the exact integer
    selection of :func:`top_n_mask` is used.
    """
    if not blend:
        return top_n_mask(sums.to(torch.int64) if sums.is_floating_point() else sums, n_keep)
    mean = sums.to(torch.float64) / counts.clamp_min(1).to(torch.float64)[:, None]
    if blend:
        mean = mean.mul_(1.0 - blend).add_(prev.to(torch.float64), alpha=blend)
    return top_n_mask(mean, n_keep)


def initial_points(
    patterns: PackedPatterns,
    k: int,
    *,
    init: str,
    seed: int,
    device: torch.device,
    kind: str,
    min_zero_share: float,
    init_sample: int | None,
    to_centroid,
    chunk_size: int,
    given=None,
) -> torch.Tensor:
    """Starting centroids ``(k, width)`` bool: ``to_centroid`` of the ``given`` ``(k, width)``
    array if one is passed, else of the seed points chosen by ``init`` (see :data:`INITS`)."""
    if given is not None:
        start = torch.as_tensor(given).to(device)
        if tuple(start.shape) != (k, patterns.width):
            raise ValueError(f"init_centroids has shape {tuple(start.shape)}, expected ({k}, {patterns.width})")
        return to_centroid(start.float())
    if init == "random":
        points, _ = init_random_points(patterns, k, seed=seed, device=device, min_zero_share=min_zero_share)
    elif init == "kmeans++":
        points, _ = init_kmeanspp(
            patterns, k, seed=seed, device=device, kind=kind, to_centroid=to_centroid,
            sample_size=init_sample, chunk_size=chunk_size,
        )
    else:
        raise ValueError(f"unknown init {init!r}; known: {', '.join(INITS)}")
    return to_centroid(points)


@register("apc")
def apc(
    patterns: PackedPatterns,
    k: int,
    *,
    density: float,
    seed: int = 42,
    max_iter: int = 50,
    device: str | torch.device = "auto",
    chunk_size: int = 65536,
    init: str = "random",
    min_zero_share: float = 0.4,
    init_sample: int | None = None,
    init_centroids=None,
    blend: float = 0.0,
    assignment: str = "argmin",
    slack: float = 1.0,
    dtype: str = "float32",
    block_rows: int | None = None,
    accumulate: str = "auto",
    matmul: str = "auto",
    distributed: bool = False,
) -> ClusterResult:
    """Cluster ``patterns`` into ``k`` centroids of exactly ``round(density * width)`` ones.

    ``init_centroids`` (``(k, width)`` bool) overrides ``init``; it is capped
    to the density like any seed.  ``dtype="bfloat16"`` (CUDA only) runs the
    products in bf16 with fp32 output, exact for 0/1 data.  ``block_rows`` is
    how many rows are unpacked at once (default: cache-sized on CPU, the whole
    chunk on CUDA) and ``accumulate`` how member sums are formed (see
    :data:`apc.clustering.engine.ACCUMULATE`); both change speed only, never
    the result.  ``matmul`` picks the exact product (``auto``, ``fp8``,
    ``int8``, ``bf16``, ``tf32``, ``fp32``; see :mod:`apc.clustering.lowp`),
    again without changing the result.  ``distributed=True``: every rank of
    the initialised default ``torch.distributed`` group calls this alike and
    streams its share (see :mod:`apc.clustering.distributed`).
    """
    t0 = time.perf_counter()
    n_keep, dev = check_inputs(patterns, k, density, max_iter=max_iter, chunk_size=chunk_size, device=device)
    if not 0.0 <= float(blend) < 1.0:
        raise ValueError(f"blend must be in [0, 1), got {blend}")
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"unknown assignment {assignment!r}; known: {', '.join(ASSIGNMENTS)}")
    cdtype = compute_dtype(dtype, dev)
    accumulate = resolve_accumulate(accumulate, dev)
    matmul = resolve_matmul(matmul, dev, cdtype)
    block = int(block_rows or default_block_rows(patterns.width, dev, chunk_size))
    freq = activity_frequency(patterns, dev, chunk_size=chunk_size, seed=seed)

    def to_centroid(points: torch.Tensor) -> torch.Tensor:
        return cap_points(points, n_keep, freq)

    start = initial_points(
        patterns, k, init=init, seed=seed, device=dev, kind="activation", min_zero_share=min_zero_share,
        init_sample=init_sample, to_centroid=to_centroid, chunk_size=chunk_size, given=init_centroids,
    )
    centroids, assignments, history, converged = lloyd(
        patterns, start, kind="activation",
        update=lambda sums, counts, prev: capped_update(sums, counts, prev, n_keep, float(blend)),
        reseed=lambda points, f: cap_points(points, n_keep, f / f.max().clamp_min(1.0)),  # f: mean weight
        max_iter=max_iter, chunk_size=chunk_size, block_rows=block, dtype=cdtype,
        assignment=assignment, slack=float(slack), accumulate_method=accumulate, matmul=matmul,
        distributed=bool(distributed), name="apc",
    )
    return ClusterResult(
        centroids=centroids, iterations=len(history), converged=converged, history=history,
        assignments=assignments, method="apc", density=float(density), seed=seed,
        options=dict(init=init if init_centroids is None else "given", min_zero_share=min_zero_share,
                     init_sample=init_sample, blend=float(blend), assignment=assignment, slack=float(slack),
                     dtype=str(dtype), max_iter=max_iter, chunk_size=chunk_size, accumulate=accumulate,
                     matmul=matmul),
        seconds=round(time.perf_counter() - t0, 3),
    )


@register("apc_balanced")
def apc_balanced(patterns: PackedPatterns, k: int, **kwargs) -> ClusterResult:
    """APC with the paper's capacity-limited greedy assignment (``assignment="balanced"``)."""
    kwargs.setdefault("assignment", "balanced")
    result = apc(patterns, k, **kwargs)
    result.method = "apc_balanced"
    return result


@register("apc_weighted")
def apc_weighted(patterns: PackedPatterns, k: int, *, weighting: str = "magnitude", **kwargs) -> ClusterResult:
    """APC on the weights of ``patterns`` (a :class:`WeightedPatterns`): centroids miss the least weight.

    ``weighting`` (see :data:`WEIGHTINGS`) must match the weights the patterns
    carry.  Assignment is argmin and products run in float32.  Other options
    are those of :func:`apc`.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    if not isinstance(patterns, WeightedPatterns):
        raise ValueError(f"apc_weighted needs weights: patterns is a {type(patterns).__name__} without magnitudes "
                         "(store magnitudes for this projection at extraction and load them with the patterns)")
    if patterns.weighting != weighting:
        raise ValueError(f"weighting={weighting!r}, but the patterns carry {patterns.weighting!r} weights")
    if kwargs.get("assignment", "argmin") != "argmin":
        raise ValueError(f"apc_weighted supports assignment='argmin' only, got {kwargs['assignment']!r}")
    if kwargs.get("dtype", "float32") not in ("float32", "fp32", torch.float32):
        raise ValueError(f"apc_weighted computes in float32, got dtype={kwargs['dtype']!r}")
    result = apc(patterns, k, **kwargs)
    result.method = "apc_weighted"
    result.options["weighting"] = weighting
    return result
