"""Centroid quality on a pattern set, with oracle nearest-centroid assignment.

Each pattern ``x`` is assigned the centroid ``c(x)`` nearest by the
activation-aware distance (largest overlap, ties -> lowest index), streamed in
chunks with one matrix product per chunk.  With magnitudes
(:class:`~apc.clustering.WeightedPatterns`) the assignment may instead take
the centroid that misses the least weight (``assign_by="weights"``, as
``apc_weighted`` trains).  A product cell (``groups`` = G > 1, see
:mod:`apc.clustering.product`) assigns one centroid per neuron group and
``c(x)`` is their union.  :func:`coverage_sums` returns additive sums, so
per-layer results and a pooled total combine exactly
(``sum(sums_per_layer, CoverageSums())``); :func:`metrics_from_sums` turns
sums into rates:

* ``recall`` = sum|x AND c(x)| / sum|x| -- the paper's "clustering precision"
  (also ``paper_precision``);
* ``precision`` = sum|x AND c(x)| / sum|c(x)|;
* ``f1`` = harmonic mean of the two;
* ``centroid_density`` = sum|c(x)| / (n d): mean density of the assigned
  centroid, equal to ``compute_share`` (share of the projection's neurons a
  centroid mask computes) and to ``random_recall`` (expected recall of a
  random mask of that density);
* ``data_density`` = sum|x| / (n d);
* ``mass_recall`` = sum w.c(x) / sum w -- the share of the weight (|x|, or
  the output weighting) that the mask keeps, over all neurons; only when
  the patterns carry weights.

Only torch and numpy are used.
"""

from __future__ import annotations

from dataclasses import asdict, astuple, dataclass

import numpy as np
import torch

from apc.clustering.common import default_block_rows
from apc.clustering.data import PackedPatterns, WeightedPatterns
from apc.common.device import exact_matmul, resolve_device
from apc.clustering.distance import overlap
from apc.clustering.product import nearest_in_groups
from apc.extraction.patterns import unpack_torch

__all__ = ["CoverageSums", "coverage_sums", "metrics_from_sums", "evaluate_centroids"]


@dataclass(frozen=True)
class CoverageSums:
    """Additive totals of an evaluation (integers, but the weight sums)."""

    n_tokens: int = 0
    cells: int = 0  # sum over tokens of the width, n * d
    active: int = 0  # sum |x|
    hits: int = 0  # sum |x AND c(x)|
    centroid_ones: int = 0  # sum |c(x)|
    mass: float = 0.0  # sum of the weights w (0 without weights)
    mass_hits: float = 0.0  # sum w.c(x)

    def __add__(self, other: "CoverageSums") -> "CoverageSums":
        if not isinstance(other, CoverageSums):
            return NotImplemented
        return CoverageSums(*(a + b for a, b in zip(self.as_tuple(), other.as_tuple())))

    def __radd__(self, other):  # lets sum() start from 0
        if other == 0:
            return self
        return self.__add__(other)

    def as_tuple(self) -> tuple:
        return astuple(self)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CoverageSums":
        out = {k: int(d[k]) for k in ("n_tokens", "cells", "active", "hits", "centroid_ones")}
        return cls(**out, mass=float(d.get("mass", 0.0)), mass_hits=float(d.get("mass_hits", 0.0)))


def _as_centroids(centroids, width: int, device: torch.device) -> torch.Tensor:
    c = torch.as_tensor(np.asarray(centroids) if not isinstance(centroids, torch.Tensor) else centroids)
    if c.ndim != 2 or c.shape[1] != width:
        raise ValueError(f"centroids must be (K, {width}), got shape {tuple(c.shape)}")
    if c.shape[0] == 0:
        raise ValueError("centroids must hold at least one centroid")
    return c.to(device=device).bool()


def coverage_sums(
    patterns: PackedPatterns,
    centroids: np.ndarray | torch.Tensor,
    *,
    groups: int = 1,
    assign_by: str = "pattern",
    assign_scale=None,
    device: str | torch.device = "auto",
    chunk_size: int = 65536,
    return_assignments: bool = False,
):
    """Stream ``patterns`` and sum the coverage of their nearest centroid.

    ``centroids``: ``(K, width)`` bool, or ``(G*K, width)`` laid out by group
    for a product cell with ``groups`` = G.  ``assign_by``: ``"pattern"``
    (largest overlap with the bits) or ``"weights"`` (least missed weight;
    needs :class:`WeightedPatterns`); ``assign_scale`` (``(width,)``, optional)
    multiplies the weights for the assignment only (the ``output`` weighting
    ``|x| * ||W_down[:, j]||`` while the mass stays ``|x|``).  With weights, the
    mass sums are filled too.  Returns :class:`CoverageSums`, and with ``return_assignments`` also
    the CPU assignment, ``(n,)`` int64 (``(n, G)`` rows for a product cell).
    """
    if not isinstance(patterns, PackedPatterns):
        raise TypeError(f"patterns must be a PackedPatterns, got {type(patterns).__name__}")
    weighted = isinstance(patterns, WeightedPatterns)
    if assign_by not in ("pattern", "weights"):
        raise ValueError(f"assign_by must be 'pattern' or 'weights', got {assign_by!r}")
    if assign_by == "weights" and not weighted:
        raise ValueError("assign_by='weights' needs weights: pass a WeightedPatterns (patterns with magnitudes)")
    dev = resolve_device(device)
    width = patterns.width
    c_bool = _as_centroids(centroids, width, dev)
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or c_bool.shape[0] % groups:
        raise ValueError(f"groups must be a positive integer dividing the {c_bool.shape[0]} centroid rows, got {groups!r}")
    c = c_bool.float()
    c_assign = c
    if assign_scale is not None:
        if assign_by != "weights":
            raise ValueError("assign_scale scales the weights of the assignment: it needs assign_by='weights'")
        scale = torch.as_tensor(np.asarray(assign_scale), dtype=torch.float32, device=dev).reshape(-1)
        if scale.numel() != width:
            raise ValueError(f"assign_scale has {scale.numel()} values, expected the width {width}")
        c_assign = c * scale[None, :]  # w . (c * s) = (w * s) . c: one product, the centroids scaled once
    c_sum = c_bool.sum(dim=1, dtype=torch.int64)
    block = default_block_rows(width, dev, chunk_size)
    active = torch.zeros((), dtype=torch.int64, device=dev)
    hits = torch.zeros((), dtype=torch.int64, device=dev)
    ones = torch.zeros((), dtype=torch.int64, device=dev)
    mass = torch.zeros((), dtype=torch.float64, device=dev)
    mass_hits = torch.zeros((), dtype=torch.float64, device=dev)
    shape = (patterns.n,) if groups == 1 else (patterns.n, groups)
    assign = torch.empty(shape, dtype=torch.int64) if return_assignments else None
    start = 0
    with exact_matmul(dev):
        for packed in patterns.packed_chunks(chunk_size, dev):
            for b0 in range(0, packed.shape[0], block):
                x = unpack_torch(packed[b0 : b0 + block], width, torch.float32)
                ov = overlap(x, c)
                if weighted:
                    w = patterns.values(packed[b0 : b0 + block], start)
                    w_ov = overlap(w, c)
                if assign_by == "weights":
                    _, rows = nearest_in_groups(w_ov if assign_scale is None else overlap(w, c_assign), groups)
                else:
                    _, rows = nearest_in_groups(ov, groups)
                active += x.sum(dim=1, dtype=torch.float32).to(torch.int64).sum()
                hits += ov.gather(1, rows).to(torch.int64).sum()
                ones += c_sum[rows].sum()
                if weighted:
                    mass += w.sum(dtype=torch.float64)
                    mass_hits += w_ov.gather(1, rows).sum(dtype=torch.float64)
                if assign is not None:
                    assign[start : start + rows.shape[0]] = (rows[:, 0] if groups == 1 else rows).cpu()
                start += rows.shape[0]
    sums = CoverageSums(
        n_tokens=patterns.n, cells=patterns.n * width, active=int(active), hits=int(hits), centroid_ones=int(ones),
        mass=float(mass), mass_hits=float(mass_hits),
    )
    return (sums, assign) if return_assignments else sums


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def metrics_from_sums(sums: CoverageSums) -> dict[str, float | int]:
    """Rates from :class:`CoverageSums` (NaN where a denominator is 0; ``mass_recall`` only with weights)."""
    recall = _ratio(sums.hits, sums.active)
    precision = _ratio(sums.hits, sums.centroid_ones)
    f1 = 2 * precision * recall / (precision + recall) if (precision + recall) > 0 else float("nan")
    centroid_density = _ratio(sums.centroid_ones, sums.cells)
    out = {
        "n_tokens": int(sums.n_tokens),
        "recall": recall,
        "paper_precision": recall,
        "precision": precision,
        "f1": f1,
        "centroid_density": centroid_density,
        "data_density": _ratio(sums.active, sums.cells),
        "compute_share": centroid_density,
        "random_recall": centroid_density,
    }
    if sums.mass > 0:
        out["mass_recall"] = sums.mass_hits / sums.mass
    return out


def evaluate_centroids(
    patterns: PackedPatterns,
    centroids: np.ndarray | torch.Tensor,
    *,
    groups: int = 1,
    assign_by: str = "pattern",
    device: str | torch.device = "auto",
    chunk_size: int = 65536,
) -> dict[str, float | int]:
    """Flat dict: :func:`metrics_from_sums` of :func:`coverage_sums` plus the raw sums
    (``cells``, ``active``, ``hits``, ``centroid_ones``, ``mass``, ``mass_hits``), so rows can be re-combined."""
    sums = coverage_sums(patterns, centroids, groups=groups, assign_by=assign_by, device=device, chunk_size=chunk_size)
    out = metrics_from_sums(sums)
    out.update(sums.as_dict())
    return out
