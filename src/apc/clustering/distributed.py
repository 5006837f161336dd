"""Data-parallel clustering over ``torch.distributed`` (NCCL on GPUs, gloo on CPUs).

Each rank streams its own share of the patterns -- whole chunks, so that the
chunks (and hence capacity-limited assignment) are the same as in one process
-- and the pass totals (member sums, counts, objective, changed, active bits)
are summed over the ranks.  Every rank then makes the same deterministic
update, so the centroids agree everywhere and equal those of one process.
NVLink multicast stays off (``NCCL_NVLS_ENABLE=0``).
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["init_process_group", "shard_bounds", "world", "all_reduce_pass", "all_gather_shards"]


def init_process_group(backend: str, rank: int, world_size: int, init_method: str,
                       timeout_s: float = 600.0) -> None:
    """Start the default process group (``backend`` ``"nccl"`` or ``"gloo"``) with NVLink multicast off.

    On NCCL the rank's GPU is ``cuda:(rank % device_count)``.
    """
    os.environ["NCCL_NVLS_ENABLE"] = "0"
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"unknown backend {backend!r}; use 'nccl' or 'gloo'")
    if backend == "nccl":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


def world(group=None) -> tuple[int, int]:
    """``(rank, world_size)`` of ``group`` (the default group if None)."""
    return dist.get_rank(group), dist.get_world_size(group)


def shard_bounds(n: int, chunk_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Rows ``[lo, hi)`` of rank ``rank``: a contiguous run of whole chunks, as even as chunks allow."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside a world of {world_size}")
    n_chunks = -(-int(n) // int(chunk_size))
    lo_chunk = n_chunks * rank // world_size
    hi_chunk = n_chunks * (rank + 1) // world_size
    return min(n, lo_chunk * chunk_size), min(n, hi_chunk * chunk_size)


def all_reduce_pass(result, group=None) -> None:
    """Sum a pass's totals (:class:`apc.clustering.engine.PassResult`) over the ranks, in place."""
    for t in (result.sums, result.counts, result.objective, result.changed, result.active):
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)


def all_gather_shards(local: torch.Tensor, n: int, chunk_size: int, group=None) -> torch.Tensor:
    """Concatenate every rank's ``(hi - lo,)`` shard (see :func:`shard_bounds`) into ``(n,)``, on every rank."""
    rank, size = world(group)
    bounds = [shard_bounds(n, chunk_size, r, size) for r in range(size)]
    longest = max(hi - lo for lo, hi in bounds)
    padded = torch.zeros((longest,) + tuple(local.shape[1:]), dtype=local.dtype, device=local.device)
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([p[: hi - lo] for p, (lo, hi) in zip(parts, bounds)])
