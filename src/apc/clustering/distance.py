"""Distances between binary patterns and binary centroids, one matrix product per chunk.

All functions take unpacked 0/1 tensors ``x: (m, d)`` (patterns) and
``c: (K, d)`` (centroids) in a floating dtype on one device and return
float32 results.  Counts are exact: 0/1 products summed in fp32 are exact
below 2**24, TF32 on CUDA keeps 0/1 operands exact, and bfloat16 operands
(CUDA only) are multiplied with an fp32 output.

* activation-aware distance ``d(x, c) = |x AND NOT c| = |x| - x.c``
  (missed active neurons; positions where x is 0 are ignored);
* Hamming distance ``|x| + |c| - 2 x.c``.

The nearest centroid is the argmin; ties go to the lowest centroid index.
"""

from __future__ import annotations

import torch

__all__ = [
    "DISTANCES",
    "overlap",
    "activation_aware_distance",
    "hamming_distance",
    "pairwise_distance",
    "nearest",
    "nearest_from_overlap",
    "distance_from_overlap",
]

#: Names accepted by :func:`pairwise_distance` and :func:`nearest`.
DISTANCES = ("activation", "hamming")


def overlap(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``x @ c.T`` as float32 ``(m, K)``: the number of shared active positions."""
    if x.dtype == torch.float32 and c.dtype == torch.float32:
        return x @ c.t()
    if x.dtype == torch.bfloat16 and c.dtype == torch.bfloat16 and x.is_cuda:
        return torch.mm(x, c.t(), out_dtype=torch.float32)
    return x.float() @ c.float().t()


def _rowsum(x: torch.Tensor) -> torch.Tensor:
    return x.sum(dim=1, dtype=torch.float32)


def activation_aware_distance(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``(m, K)`` float32 matrix of ``|x_i AND NOT c_k| = rowsum(x_i) - x_i.c_k``."""
    ov = overlap(x, c)
    return torch.sub(_rowsum(x)[:, None], ov, out=ov)


def hamming_distance(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``(m, K)`` float32 matrix of Hamming distances ``|x_i| + |c_k| - 2 x_i.c_k``."""
    ov = overlap(x, c)
    return (_rowsum(x)[:, None] + _rowsum(c)[None, :]).sub_(ov, alpha=2.0)


def pairwise_distance(x: torch.Tensor, c: torch.Tensor, kind: str = "activation") -> torch.Tensor:
    """Full ``(m, K)`` distance matrix of the named ``kind`` (see :data:`DISTANCES`)."""
    if kind == "activation":
        return activation_aware_distance(x, c)
    if kind == "hamming":
        return hamming_distance(x, c)
    raise ValueError(f"unknown distance {kind!r}; known: {', '.join(DISTANCES)}")


def nearest(
    x: torch.Tensor,
    c: torch.Tensor,
    kind: str = "activation",
    c_sum: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of each row: ``(index int64 (m,), distance float32 (m,))``.

    One matrix product; ties go to the lowest index.  For the activation-aware
    distance the argmin is the argmax of the overlap (``|x|`` is constant per
    row); for Hamming it is the argmax of ``2 x.c - |c|``.  ``c_sum`` (the
    centroid sizes, float32) may be passed to save a reduction per call.
    """
    return nearest_from_overlap(overlap(x, c), _rowsum(x), kind, c_sum if c_sum is not None or kind != "hamming"
                                else _rowsum(c))


def nearest_from_overlap(
    ov: torch.Tensor, xs: torch.Tensor, kind: str = "activation", c_sum: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid from the overlaps ``ov: (m, K)`` (float32 or int32; may be overwritten).

    ``xs: (m,)`` float32 pattern sizes; ``c_sum: (K,)`` centroid sizes (Hamming
    only).  Returns ``(index int64 (m,), distance float32 (m,))``, ties to the
    lowest index.
    """
    if kind == "activation":
        best, idx = ov.max(dim=1)
        return idx, xs - best.to(torch.float32)
    if kind == "hamming":
        if c_sum is None:
            raise ValueError("c_sum (the centroid sizes) is needed for the Hamming distance")
        best, idx = ov.mul_(2).sub_(c_sum.to(ov.dtype)[None, :]).max(dim=1)
        return idx, xs - best.to(torch.float32)
    raise ValueError(f"unknown distance {kind!r}; known: {', '.join(DISTANCES)}")


def distance_from_overlap(
    ov: torch.Tensor, xs: torch.Tensor, kind: str = "activation", c_sum: torch.Tensor | None = None
) -> torch.Tensor:
    """Full ``(m, K)`` float32 distance matrix from the overlaps (see :func:`nearest_from_overlap`)."""
    ov = ov.to(torch.float32)
    if kind == "activation":
        return xs[:, None] - ov
    if kind == "hamming":
        if c_sum is None:
            raise ValueError("c_sum (the centroid sizes) is needed for the Hamming distance")
        return (xs[:, None] + c_sum.to(torch.float32)[None, :]).sub_(ov, alpha=2.0)
    raise ValueError(f"unknown distance {kind!r}; known: {', '.join(DISTANCES)}")
