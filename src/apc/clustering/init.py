"""Seeding: random data points with a minimum share of zeros, or k-means++.

Both return *data points* (unpacked, on the device); a method turns them into
centroids (APC caps them to its density, k-means uses them as they are).
All randomness comes from a ``numpy.random.RandomState(seed)``; the global
RNGs are never touched.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..common.progress import get_logger
from .data import PackedPatterns
from .distance import pairwise_distance

__all__ = ["INITS", "init_random_points", "init_kmeanspp", "activity_frequency"]

log = get_logger("apc.clustering.init")

#: Names accepted by the ``init`` option of the iterative methods.
INITS = ("random", "kmeans++")


def activity_frequency(
    patterns: PackedPatterns, device: torch.device, *, chunk_size: int = 65536, max_n: int | None = 65536, seed: int = 0
) -> torch.Tensor:
    """Share of patterns in which each neuron is active, ``(width,)`` float64 on ``device``.

    Estimated on a deterministic subsample of ``max_n`` rows (all rows if None).
    """
    sample = patterns if max_n is None else patterns.subsample(max_n, seed)
    total = torch.zeros(patterns.width, dtype=torch.float64, device=device)
    for x in sample.chunks(chunk_size, device, torch.uint8):
        total += x.sum(dim=0, dtype=torch.float64)
    return total / max(1, sample.n)


def init_random_points(
    patterns: PackedPatterns,
    k: int,
    *,
    seed: int,
    device: torch.device,
    min_zero_share: float = 0.4,
    batch: int | None = None,
) -> tuple[torch.Tensor, np.ndarray]:
    """``k`` distinct random data points with at least ``min_zero_share`` zeros.

    Candidates are visited in a seeded random order; a candidate is accepted if
    its share of zeros is at least ``min_zero_share`` and its pattern differs
    from all accepted ones.  If too few qualify, the remaining slots take the
    distinct points with the most zeros, then (fewer than ``k`` distinct
    patterns) repeated points, each with a warning.
    Returns ``(points (k, width) float32 on device, row indices (k,))``.
    """
    if not 0.0 <= min_zero_share <= 1.0:
        raise ValueError(f"min_zero_share must be in [0, 1], got {min_zero_share}")
    n, width = patterns.n, patterns.width
    rng = np.random.RandomState(seed)
    order = rng.permutation(n)
    batch = int(batch or max(4 * k, 1024))
    need_ones_max = width - int(np.ceil(min_zero_share * width - 1e-9))  # ones allowed
    chosen: list[int] = []
    seen: set[bytes] = set()
    rejected_idx: list[np.ndarray] = []
    rejected_ones: list[np.ndarray] = []
    for start in range(0, n, batch):
        idx = order[start : start + batch]
        packed = patterns.packed_rows(idx, "cpu").numpy()
        ones = np.unpackbits(packed, axis=1, count=width).sum(axis=1)
        ok = ones <= need_ones_max
        for j in np.nonzero(ok)[0]:
            key = packed[j].tobytes()
            if key not in seen:
                seen.add(key)
                chosen.append(int(idx[j]))
                if len(chosen) == k:
                    break
        if len(chosen) == k:
            break
        rejected_idx.append(idx[~ok])
        rejected_ones.append(ones[~ok])
    if len(chosen) < k:
        log.warning(
            "only %d of %d patterns have >= %.0f%% zeros and are distinct; filling %d seeds with the sparsest others",
            len(chosen), n, 100 * min_zero_share, k - len(chosen),
        )
        r_idx = np.concatenate(rejected_idx) if rejected_idx else np.zeros(0, np.int64)
        r_ones = np.concatenate(rejected_ones) if rejected_ones else np.zeros(0, np.int64)
        r_idx = r_idx[np.argsort(r_ones, kind="stable")]
        for s in range(0, r_idx.size, batch):
            part = r_idx[s : s + batch]
            packed = patterns.packed_rows(part, "cpu").numpy()
            for j, i in enumerate(part):
                key = packed[j].tobytes()
                if key not in seen:
                    seen.add(key)
                    chosen.append(int(i))
                    if len(chosen) == k:
                        break
            if len(chosen) == k:
                break
    if len(chosen) < k:
        log.warning("the data hold only %d distinct patterns for k=%d; repeating points", len(chosen), k)
        extra = [int(i) for i in order if int(i) not in set(chosen)][: k - len(chosen)]
        chosen.extend(extra)
    index = np.asarray(chosen, dtype=np.int64)
    return patterns.rows(index, device, torch.float32), index


def init_kmeanspp(
    patterns: PackedPatterns,
    k: int,
    *,
    seed: int,
    device: torch.device,
    kind: str = "activation",
    to_centroid: Callable[[torch.Tensor], torch.Tensor] | None = None,
    sample_size: int | None = None,
    n_trials: int | None = None,
    chunk_size: int = 65536,
) -> tuple[torch.Tensor, np.ndarray]:
    """Greedy k-means++ seeding with the ``kind`` distance, on a subsample.

    The first seed is a uniform random point.  Each next one: draw
    ``n_trials`` candidates (default ``2 + floor(ln k)``, as scikit-learn) with
    probability proportional to the squared distance of a point to its
    nearest chosen centroid, and keep the candidate that lowers the total
    squared distance most (ties -> first drawn).  A chosen point becomes
    ``to_centroid(point)`` (e.g. capped to the density).  Runs on a
    deterministic subsample of ``sample_size`` rows (default
    ``max(8k, 16384)``), one ``(m x d) @ (d x n_trials)`` product per seed.
    Returns ``(points (k, width) float32, global row indices (k,))``.
    """
    n = patterns.n
    if sample_size is None:
        sample_size = max(8 * k, 16384)
    sample_size = max(k, min(int(sample_size), n))
    if n_trials is None:
        n_trials = 2 + int(np.log(k))
    n_trials = max(1, int(n_trials))
    rng = np.random.RandomState(seed)
    if sample_size < n:
        sample_idx = np.sort(rng.choice(n, size=sample_size, replace=False))
    else:
        sample_idx = np.arange(n)
    x = torch.cat([patterns.rows(sample_idx[s : s + chunk_size], device, torch.float32)
                   for s in range(0, sample_idx.size, chunk_size)])
    m = x.shape[0]
    to_centroid = to_centroid or (lambda p: p)
    picks = [int(rng.randint(m))]
    best = pairwise_distance(x, to_centroid(x[picks[0] : picks[0] + 1]).float(), kind)[:, 0].double()
    best[picks[0]] = 0.0
    for _ in range(1, k):
        cum = torch.cumsum(best * best, 0)
        total = float(cum[-1])
        if total <= 0.0:  # every point is covered: take a uniform unchosen one
            free = np.setdiff1d(np.arange(m), np.asarray(picks))
            cand = np.asarray([int(free[rng.randint(free.size)])])
        else:
            u = torch.from_numpy(rng.random_sample(n_trials) * total).to(device=cum.device, dtype=cum.dtype)
            # cum[j] > u >= cum[j-1]: each drawn point has positive weight
            cand = torch.searchsorted(cum, u, right=True).clamp_(max=m - 1).cpu().numpy()
        d_new = pairwise_distance(x, to_centroid(x[torch.from_numpy(cand).to(device)]).float(), kind).double()
        d_new = torch.minimum(d_new, best[:, None])
        potential = (d_new * d_new).sum(dim=0)
        j = int(torch.argmin(potential))
        picks.append(int(cand[j]))
        best = d_new[:, j].contiguous()
        best[picks[-1]] = 0.0
    rows = x[picks]
    return rows, sample_idx[np.asarray(picks)]
