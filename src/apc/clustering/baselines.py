"""Control baselines: random masks and one static mask.

* ``random``: ``K`` masks with exactly ``round(density * width)`` ones at
  uniformly random positions (seeded, no data, no iterations);
* ``static``: ``K = 1``, the ``round(density * width)`` neurons most often
  active in the data (ties -> lowest index), one streaming pass.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from .common import ClusterResult, check_inputs, top_n_mask
from .data import PackedPatterns
from .init import activity_frequency
from .registry import register

__all__ = ["random_masks", "random_control", "static_mask"]


def random_masks(k: int, width: int, n_keep: int, seed: int) -> torch.Tensor:
    """``(k, width)`` bool masks, each with exactly ``n_keep`` uniformly random ones."""
    rng = np.random.RandomState(seed)
    score = torch.from_numpy(rng.random_sample((k, width)))
    return top_n_mask(score, n_keep)


@register("random")
def random_control(
    patterns: PackedPatterns,
    k: int,
    *,
    density: float,
    seed: int = 42,
    max_iter: int = 1,
    device: str | torch.device = "auto",
    chunk_size: int = 65536,
) -> ClusterResult:
    """Random-centroid control: ``k`` random masks at exactly the centroid density."""
    t0 = time.perf_counter()
    n_keep, _ = check_inputs(patterns, k, density, chunk_size=chunk_size, device=device)
    return ClusterResult(
        centroids=random_masks(k, patterns.width, n_keep, seed), iterations=0, converged=True, history=[],
        assignments=None, method="random", density=float(density), seed=seed, options={},
        seconds=round(time.perf_counter() - t0, 3),
    )


@register("static", fixed_k=1)
def static_mask(
    patterns: PackedPatterns,
    k: int = 1,
    *,
    density: float,
    seed: int = 42,
    max_iter: int = 1,
    device: str | torch.device = "auto",
    chunk_size: int = 65536,
) -> ClusterResult:
    """One static mask (``k`` must be 1): the most frequently active neurons at the density."""
    t0 = time.perf_counter()
    if k != 1:
        raise ValueError(f"method 'static' needs k=1 (one mask for every token), got k={k}")
    n_keep, dev = check_inputs(patterns, k, density, chunk_size=chunk_size, device=device)
    freq = activity_frequency(patterns, dev, chunk_size=chunk_size, max_n=None)
    return ClusterResult(
        centroids=top_n_mask(freq[None, :], n_keep).cpu(), iterations=1, converged=True, history=[],
        assignments=torch.zeros(patterns.n, dtype=torch.int64), method="static", density=float(density),
        seed=seed, options={}, seconds=round(time.perf_counter() - t0, 3),
    )
