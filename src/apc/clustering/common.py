"""Shared pieces of the clustering methods: result type, density cap, validation."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .data import PackedPatterns
from ..common.device import resolve_device
from .kernels import top_n_rows

__all__ = [
    "ClusterResult",
    "MAX_CHUNK",
    "density_to_count",
    "top_n_mask",
    "top_n_masks",
    "cap_points",
    "check_inputs",
    "default_block_rows",
    "compute_dtype",
]

#: Largest chunk for which per-chunk float32 counts stay exact (2**24).
MAX_CHUNK = 1 << 24


@dataclass
class ClusterResult:
    """Output of every clustering method.

    ``centroids`` is ``(K, width)`` bool on the CPU.  ``history`` holds one
    dict per assignment pass (``iteration``, ``objective``, ``changed``,
    ``empty``, ``active``, ``seconds``).  ``assignments`` (``(n,)`` int64 CPU,
    optional) is the cluster index of each pattern from the *last assignment
    pass*, i.e. with respect to the centroids before the final update unless
    ``converged``.
    """

    centroids: torch.Tensor
    iterations: int
    converged: bool
    history: list[dict] = field(default_factory=list)
    assignments: torch.Tensor | None = None
    method: str = ""
    density: float | None = None
    seed: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    group_labels: torch.Tensor | None = None  # product clustering: (width,) int64 group of every neuron

    @property
    def k(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def width(self) -> int:
        return int(self.centroids.shape[1])

    def meta(self) -> dict[str, Any]:
        """JSON-ready description (for :func:`apc.clustering.io.save_centroids`)."""
        return {
            "method": self.method,
            "target_density": self.density,
            "seed": self.seed,
            "iterations": self.iterations,
            "converged": self.converged,
            "options": {k: v for k, v in self.options.items() if isinstance(v, (int, float, str, bool, type(None)))},
            "seconds": self.seconds,
            "final_objective": self.history[-1]["objective"] if self.history else None,
        }


def density_to_count(density: float, width: int) -> int:
    """Number of active positions per centroid: ``round(density * width)`` (halves round up).

    Raises ``ValueError`` for a density outside ``(0, 1]`` or one that leaves no position.
    """
    try:
        density = float(density)
    except (TypeError, ValueError):
        raise ValueError(f"density must be a number in (0, 1], got {density!r}") from None
    if not (0.0 < density <= 1.0) or math.isnan(density):
        raise ValueError(f"density must be in (0, 1], got {density}")
    count = int(math.floor(density * width + 0.5))
    if count < 1:
        raise ValueError(f"density {density} keeps no position of width {width}")
    return min(count, int(width))


def top_n_mask(score: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Bool mask keeping the ``n_keep`` highest scores of each row.

    Deterministic: ties go to the lowest position, and every row has exactly
    ``n_keep`` True entries.  Integer scores (counts) take a faster exact
    route, a selection of the ``n_keep``-th largest unique key
    ``score * width + (width - 1 - position)`` per row (a Triton bisection on
    CUDA; integer scores must stay below ``2**61 / width`` in magnitude);
    float32/float64 scores a selection of the ``n_keep``-th largest value, ties at
    it taken from the lowest positions; other scores (and rows with NaN) a stable
    sort by descending score. All routes keep the same set.
    """
    if not score.is_floating_point() and score.dtype != torch.bool:
        width = score.shape[1]
        if not 0 < n_keep <= width:
            raise ValueError(f"n_keep must be in [1, {width}], got {n_keep}")
        fast = top_n_rows(score, n_keep)
        if fast is not None:
            return fast
        lo, hi = (int(v) for v in torch.aminmax(score))
        # the narrowest key type that holds score * width + position (int32 halves the selection's work)
        small = lo >= 0 and hi < (2**31 - width) // width
        kdt = torch.int32 if small else torch.int64
        pos = torch.arange(width - 1, -1, -1, dtype=kdt, device=score.device)
        key = score.to(kdt) * width + pos  # a new tensor: the caller's scores stay as they are
        kth = torch.kthvalue(key, width - n_keep + 1, dim=1, keepdim=True).values
        return key >= kth
    if score.dtype in (torch.float32, torch.float64) and 0 < n_keep <= score.shape[1] and not torch.isnan(score).any():
        # the n-th largest value by selection, then ties at it taken from the lowest position: the same set
        # as the stable descending sort below, without sorting every row
        kth = torch.kthvalue(score, score.shape[1] - n_keep + 1, dim=1, keepdim=True).values
        above = score > kth
        at = score == kth
        need = n_keep - above.sum(dim=1, keepdim=True)
        return above | (at & (at.cumsum(dim=1) <= need))
    order = torch.argsort(score, dim=1, descending=True, stable=True)[:, :n_keep]
    mask = torch.zeros(score.shape, dtype=torch.bool, device=score.device)
    return mask.scatter_(1, order, True)


def top_n_masks(score: torch.Tensor, counts) -> list[torch.Tensor]:
    """:func:`top_n_mask` of float ``score: (n, width)`` for each of ``counts``, from one stable sort.

    Returns one ``(n, width)`` bool mask per count, in the order given; the masks are nested
    (a larger count keeps a superset), ties go to the lowest position.
    """
    width = score.shape[1]
    for n_keep in counts:
        if not 0 < n_keep <= width:
            raise ValueError(f"n_keep must be in [1, {width}], got {n_keep}")
    order = torch.argsort(score, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(width, device=score.device).expand_as(order))
    return [rank < n_keep for n_keep in counts]


def cap_points(points: torch.Tensor, n_keep: int, freq: torch.Tensor | None = None) -> torch.Tensor:
    """Turn data points ``(E, d)`` into centroids with exactly ``n_keep`` ones.

    A point's own active positions rank first; ties among them, and the filling
    of points with fewer than ``n_keep`` ones, follow the global activity
    ``freq`` (``(d,)`` in [0, 1]), then the position index.
    """
    score = points.to(torch.float64)
    if freq is not None:
        score = score + 0.5 * freq.to(device=score.device, dtype=torch.float64)[None, :]
    return top_n_mask(score, n_keep)


def compute_dtype(name: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Map ``"float32"``/``"bfloat16"`` to a dtype; bfloat16 needs CUDA."""
    if isinstance(name, torch.dtype):
        dtype = name
    else:
        table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if str(name) not in table:
            raise ValueError(f"unknown compute dtype {name!r}; use 'float32' or 'bfloat16'")
        dtype = table[str(name)]
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"unsupported compute dtype {dtype}; use float32 or bfloat16")
    if dtype == torch.bfloat16 and device.type != "cuda":
        raise ValueError("bfloat16 compute needs a CUDA device (CPU bf16 products are slow and round their output)")
    return dtype


def default_block_rows(width: int, device: torch.device, chunk_size: int) -> int:
    """Rows unpacked at once: cache-sized blocks (~16 MB of float32) on CPU, the whole chunk on CUDA."""
    if device.type == "cuda":
        return int(chunk_size)
    return int(min(chunk_size, max(256, (4 << 20) // max(1, width))))


def check_inputs(
    patterns: PackedPatterns,
    k: int,
    density: float,
    *,
    max_iter: int | None = None,
    chunk_size: int | None = None,
    device: str | torch.device = "auto",
) -> tuple[int, torch.device]:
    """Validate the common arguments; return ``(n_keep, device)``.

    Raises ``TypeError``/``ValueError`` with a message naming the bad argument.
    """
    if not isinstance(patterns, PackedPatterns):
        raise TypeError(f"patterns must be a PackedPatterns, got {type(patterns).__name__}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be a positive integer, got {k!r}")
    if k <= 0:
        raise ValueError(f"k must be a positive integer, got {k}")
    if k > patterns.n:
        raise ValueError(f"k={k} exceeds the number of patterns ({patterns.n})")
    n_keep = density_to_count(density, patterns.width)
    if max_iter is not None and (isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1):
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or not 1 <= chunk_size <= MAX_CHUNK):
        raise ValueError(f"chunk_size must be an integer in [1, {MAX_CHUNK}], got {chunk_size!r}")
    return n_keep, resolve_device(device)
