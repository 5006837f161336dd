"""The streaming Lloyd loop shared by APC and binary k-means.

One pass streams the packed patterns chunk by chunk to the device, unpacks
each block there into the operand of one exact product (fp8, int8, bf16 or
float32; see :mod:`apc.clustering.lowp`), computes the block's overlaps with
all centroids, assigns each pattern (argmin, or capacity-limited greedy), and
accumulates the per-cluster sums of member patterns (``index_add_`` on CPU,
sums straight from the packed bits on CUDA).  Memory is bounded by the block
(``block_rows x K`` overlaps, ``block_rows x width`` operand) plus ``K x
width`` accumulators and per-pattern state (assignment and distance, ``n``
each).  With ``group`` set, each rank of a ``torch.distributed`` group streams
its share of whole chunks and the pass totals are summed over the ranks.
Weighted patterns (:class:`WeightedPatterns`) decode their weights instead and take the
float32 product.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from ..extraction.patterns import unpack_torch
from ..common.progress import get_logger
from . import distributed as dist_util
from .data import PackedPatterns, WeightedPatterns
from .distance import distance_from_overlap, nearest_from_overlap, overlap
from .kernels import segment_bit_sums, triton_available
from .lowp import ExactProduct, resolve_matmul

__all__ = [
    "ACCUMULATE",
    "ASSIGNMENTS",
    "PassResult",
    "accumulate_sums",
    "assign_pass",
    "balanced_assign",
    "lloyd",
    "resolve_accumulate",
    "worst_covered",
]

log = get_logger("apc.clustering")

#: Names accepted by the ``assignment`` option.
ASSIGNMENTS = ("argmin", "balanced")


class PassResult:
    """Totals of one assignment pass (device tensors until :meth:`stats`)."""

    def __init__(self, sums, counts, objective, changed, active):
        self.sums = sums  # (K, d) float64 or int32: per-cluster sum of member patterns (exact counts)
        self.counts = counts  # (K,) int64: members per cluster
        self.objective = objective  # () float64: total distance to the assigned centroid
        self.changed = changed  # () int64: patterns whose assignment changed
        self.active = active  # () float64: total active bits

    def stats(self) -> dict:
        objective = float(self.objective)  # a count for bits, a weight sum for WeightedPatterns
        return {
            "objective": int(objective) if objective.is_integer() else round(objective, 6),
            "changed": int(self.changed),
            "empty": int((self.counts == 0).sum()),
            "active": int(round(float(self.active))),
        }


#: Ways to sum member patterns per cluster (all exact; they differ only in speed).
ACCUMULATE = ("index_add", "onehot", "sorted", "packed")


def resolve_accumulate(method: str, device: torch.device) -> str:
    """``"auto"`` -> the fastest measured way on ``device``: ``index_add`` on CPU, ``packed`` on CUDA
    (``sorted`` where Triton is missing)."""
    if method == "auto":
        if device.type == "cuda":
            return "packed" if triton_available() else "sorted"
        return "index_add"
    if method not in ACCUMULATE:
        raise ValueError(f"unknown accumulate method {method!r}; known: auto, {', '.join(ACCUMULATE)}")
    return method


def accumulate_sums(sums: torch.Tensor, idx: torch.Tensor, x: torch.Tensor, method: str = "index_add") -> None:
    """``sums[k] += sum of the rows x[i] with idx[i] == k`` for ``sums: (K, d)`` float32, in place.

    ``index_add`` scatters rows; ``onehot`` is one ``(K x m) @ (m x d)``
    product; ``sorted`` groups the rows by cluster and reduces contiguous
    segments.  Counts stay exact below 2**24.
    """
    k = sums.shape[0]
    if method == "index_add":
        sums.index_add_(0, idx, x if x.dtype == sums.dtype else x.to(sums.dtype))
    elif method == "onehot":
        onehot = torch.zeros((k, x.shape[0]), dtype=x.dtype, device=x.device)
        onehot[idx, torch.arange(x.shape[0], device=x.device)] = 1
        sums += overlap(onehot, x.t())
    elif method == "sorted":
        order = torch.argsort(idx, stable=True)
        lengths = torch.bincount(idx, minlength=k)
        xs = x.index_select(0, order)
        sums += torch.segment_reduce(xs if xs.dtype == sums.dtype else xs.to(sums.dtype), "sum",
                                     lengths=lengths, axis=0)
    else:
        raise ValueError(f"unknown accumulate method {method!r}; known: {', '.join(ACCUMULATE)}")


def balanced_assign(dist: torch.Tensor, cap: int) -> torch.Tensor:
    """Capacity-limited greedy assignment of one chunk.

    Centroids, in index order, each take their ``cap`` closest still
    unassigned rows of ``dist: (m, K)`` (ties -> lowest row index); centroids
    after the rows run out take none.  One vectorised ``topk`` per centroid.
    Returns ``(m,)`` int64 cluster indices.
    """
    m, k = dist.shape
    if cap * k < m:
        raise ValueError(f"capacity {cap} x {k} centroids cannot hold {m} rows")
    dist_t = dist.t().contiguous()
    ar = torch.arange(m, device=dist.device, dtype=torch.int64)
    taken = torch.zeros(m, dtype=torch.bool, device=dist.device)
    out = torch.full((m,), -1, dtype=torch.int64, device=dist.device)
    big = torch.iinfo(torch.int64).max
    remaining = m
    for i in range(k):
        take = min(cap, remaining)
        if take == 0:
            break
        key = dist_t[i].to(torch.int64).mul_(m).add_(ar).masked_fill_(taken, big)  # unique keys
        sel = torch.topk(key, take, largest=False, sorted=False).indices
        out[sel] = i
        taken[sel] = True
        remaining -= take
    return out


def assign_pass(
    patterns: PackedPatterns,
    centroids: torch.Tensor,
    assign: torch.Tensor,
    dist_out: torch.Tensor,
    *,
    kind: str,
    chunk_size: int,
    block_rows: int,
    dtype: torch.dtype = torch.float32,
    assignment: str = "argmin",
    slack: float = 1.0,
    accumulate: bool = True,
    accumulate_method: str = "auto",
    matmul: str = "auto",
) -> PassResult:
    """Assign every pattern to a centroid and accumulate per-cluster sums.

    ``assign`` (``(n,)`` int64) holds the previous assignment on entry and the
    new one on exit; ``dist_out`` (``(n,)`` float32) receives each pattern's
    distance to its assigned centroid.  ``matmul`` names the exact product
    (:data:`apc.clustering.lowp.MATMULS`; ``dtype`` decides between bf16 and
    fp32 where ``"auto"`` finds no one-byte product).  The result does not
    depend on ``matmul``, ``block_rows`` or ``accumulate_method``.
    """
    device = centroids.device
    weighted = isinstance(patterns, WeightedPatterns)
    accumulate_method = resolve_accumulate(accumulate_method, device)
    if weighted and accumulate_method == "packed":
        accumulate_method = "index_add"  # weights are not bits: sum the decoded values
    prod = ExactProduct("fp32" if weighted else resolve_matmul(matmul, device, dtype), device, patterns.width)
    k, width = centroids.shape
    c = prod.prepare_centroids(centroids)
    c_sum = centroids.sum(dim=1, dtype=torch.int32 if prod.name == "int8" else torch.float32)
    packed_sums = accumulate_method == "packed"
    if packed_sums:
        sums = torch.zeros((k, width), dtype=torch.int32, device=device)
    else:
        sums = torch.zeros((k, width), dtype=torch.float64, device=device)
        chunk_sums = torch.zeros((k, width), dtype=torch.float32, device=device)
    counts = torch.zeros(k, dtype=torch.int64, device=device)
    objective = torch.zeros((), dtype=torch.float64, device=device)
    active = torch.zeros((), dtype=torch.float64, device=device)
    changed = torch.zeros((), dtype=torch.int64, device=device)

    def block_floats(block: torch.Tensor, row0: int) -> torch.Tensor:
        """Float32 values of a block: bits, or the decoded weights of weighted patterns."""
        if weighted:
            return patterns.values(block, row0, torch.float32)
        return unpack_torch(block, width, torch.float32)

    def operand(block: torch.Tensor, row0: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The product's operand of a block and its row sums."""
        if weighted:
            x = block_floats(block, row0)
            return x, x.sum(dim=1, dtype=torch.float32)
        return prod.unpack(block)

    start = 0
    with prod.context():
        for packed in patterns.packed_chunks(chunk_size, device):
            m = packed.shape[0]
            if accumulate and not packed_sums:
                chunk_sums.zero_()
            if assignment == "argmin":
                for b0 in range(0, m, block_rows):
                    block = packed[b0 : b0 + block_rows]
                    mb = block.shape[0]
                    x, xs = operand(block, start + b0)
                    idx, dist = nearest_from_overlap(prod.overlap(x, c, mb, k), xs, kind, c_sum)
                    lo, hi = start + b0, start + b0 + mb
                    changed += (assign[lo:hi] != idx).sum()
                    assign[lo:hi] = idx
                    dist_out[lo:hi] = dist
                    if accumulate and not packed_sums:
                        xf = x if x.dtype == torch.float32 and x.shape[1] == width else block_floats(block, start + b0)
                        accumulate_sums(chunk_sums, idx, xf, accumulate_method)
            elif assignment == "balanced":
                dmat = torch.empty((m, k), dtype=torch.float32, device=device)
                for b0 in range(0, m, block_rows):
                    block = packed[b0 : b0 + block_rows]
                    mb = block.shape[0]
                    x, xs = operand(block, start + b0)
                    dmat[b0 : b0 + mb] = distance_from_overlap(prod.overlap(x, c, mb, k), xs, kind, c_sum)
                cap = math.ceil(math.ceil(m / k) * slack)
                idx_all = balanced_assign(dmat, cap)
                dist_all = dmat.gather(1, idx_all[:, None])[:, 0]
                del dmat
                lo, hi = start, start + m
                changed += (assign[lo:hi] != idx_all).sum()
                assign[lo:hi] = idx_all
                dist_out[lo:hi] = dist_all
                if accumulate and not packed_sums:
                    for b0 in range(0, m, block_rows):
                        block = packed[b0 : b0 + block_rows]
                        accumulate_sums(chunk_sums, idx_all[b0 : b0 + block.shape[0]],
                                        block_floats(block, start + b0), accumulate_method)
            else:
                raise ValueError(f"unknown assignment {assignment!r}; known: {', '.join(ASSIGNMENTS)}")
            seg = assign[start : start + m]
            counts.scatter_add_(0, seg, torch.ones_like(seg))  # bincount would wait for the device
            objective += dist_out[start : start + m].sum(dtype=torch.float64)
            if accumulate:
                if packed_sums:
                    segment_bit_sums(packed, seg, sums)
                else:
                    sums += chunk_sums
            start += m
    if accumulate:
        active = sums.sum(dtype=torch.float64)
    return PassResult(sums, counts, objective, changed, active)


def worst_covered(dist: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` patterns farthest from their centroid (ties -> lowest index)."""
    return torch.argsort(dist, descending=True, stable=True)[:count]


def lloyd(
    patterns: PackedPatterns,
    centroids: torch.Tensor,
    *,
    kind: str,
    update: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    reseed: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    max_iter: int,
    chunk_size: int,
    block_rows: int,
    dtype: torch.dtype = torch.float32,
    assignment: str = "argmin",
    slack: float = 1.0,
    accumulate_method: str = "auto",
    matmul: str = "auto",
    distributed: bool = False,
    group=None,
    name: str = "clustering",
) -> tuple[torch.Tensor, torch.Tensor, list[dict], bool]:
    """Alternate assignment and update until no assignment changes or ``max_iter`` passes.

    ``update(sums, counts, prev) -> (K, d) bool`` builds new centroids from the
    per-cluster sums; ``reseed(points, freq) -> (E, d) bool`` turns the
    worst-covered points into centroids for the clusters that came out empty.
    With ``distributed``, every rank of ``group`` (default: the default
    process group) calls this with the same arguments; each streams its share
    of whole chunks and all ranks return the same, single-process result.
    Returns ``(centroids (K, d) bool, assignments (n,) int64, history, converged)``.
    """
    if assignment not in ASSIGNMENTS:
        raise ValueError(f"unknown assignment {assignment!r}; known: {', '.join(ASSIGNMENTS)}")
    accumulate_method = resolve_accumulate(accumulate_method, centroids.device)
    if assignment == "balanced" and not slack >= 1.0:
        raise ValueError(f"slack must be >= 1 for balanced assignment (else points stay unassigned), got {slack}")
    device = centroids.device
    n = patterns.n
    local = patterns
    if distributed:
        rank, size = dist_util.world(group)
        lo, hi = dist_util.shard_bounds(n, chunk_size, rank, size)
        local = patterns.slice(lo, hi)
    centroids = centroids.bool()
    assign = torch.full((local.n,), -1, dtype=torch.int64, device=device)
    dist = torch.zeros(local.n, dtype=torch.float32, device=device)
    history: list[dict] = []
    converged = False
    for it in range(max_iter):
        t0 = time.perf_counter()
        res = assign_pass(
            local, centroids, assign, dist, kind=kind, chunk_size=chunk_size, block_rows=block_rows,
            dtype=dtype, assignment=assignment, slack=slack, accumulate_method=accumulate_method, matmul=matmul,
        )
        if distributed:
            dist_util.all_reduce_pass(res, group)
        stats = res.stats()
        if stats["changed"] == 0:
            converged = True
        else:
            new = update(res.sums, res.counts, centroids)
            empty = torch.nonzero(res.counts == 0)[:, 0]
            if empty.numel():
                log.warning("%s iteration %d: %d empty cluster(s) re-seeded from the worst-covered points",
                            name, it, int(empty.numel()))
                every = dist_util.all_gather_shards(dist, n, chunk_size, group) if distributed else dist
                worst = worst_covered(every, int(empty.numel()))
                points = patterns.rows(worst, device, torch.float32)
                freq = res.sums.sum(dim=0, dtype=torch.float64) / max(1, n)
                new[empty] = reseed(points, freq).to(device)
            centroids = new
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stats = {"iteration": it, **stats, "seconds": round(time.perf_counter() - t0, 4)}
        history.append(stats)
        log.info("%s iteration %d: objective %d, changed %d, empty %d (%.2fs)",
                 name, it, stats["objective"], stats["changed"], stats["empty"], stats["seconds"])
        if converged:
            break
    if distributed:
        assign = dist_util.all_gather_shards(assign, n, chunk_size, group)
    return centroids.cpu(), assign.cpu(), history, converged
