"""Data-parallel clustering: two gloo processes give exactly the one-process result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from apc.clustering import PackedPatterns, cluster
from apc.clustering.distributed import shard_bounds

RUNS = [("apc", {}), ("apc_balanced", {}), ("kmeans", {"matmul": "int8", "accumulate": "packed"})]


def _data():
    rng = np.random.RandomState(11)
    bits = rng.rand(700, 61) < 0.3
    bits[:40] = False  # identical empty patterns: empty clusters get re-seeded
    return PackedPatterns.from_bits(bits)


def _kwargs(method, opts):
    return dict(method=method, density=0.3, seed=4, device="cpu", chunk_size=128, max_iter=6, init="kmeans++", **opts)


def _worker(rank, world_size, init_file, out_dir):
    from apc.clustering.distributed import init_process_group

    import torch.distributed as dist

    torch.set_num_threads(1)
    init_process_group("gloo", rank, world_size, f"file://{init_file}", timeout_s=120)
    try:
        pats = _data()
        for i, (method, opts) in enumerate(RUNS):
            res = cluster(pats, 40, distributed=True, **_kwargs(method, opts))
            torch.save({"centroids": res.centroids, "assignments": res.assignments, "history": res.history},
                       f"{out_dir}/rank{rank}_run{i}.pt")
    finally:
        dist.destroy_process_group()


def test_shard_bounds_cover_whole_chunks():
    for n, chunk, size in [(700, 128, 2), (700, 128, 3), (100, 128, 2), (1024, 128, 8), (5, 1, 7)]:
        bounds = [shard_bounds(n, chunk, r, size) for r in range(size)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
        assert all(lo % chunk == 0 and lo <= hi for lo, hi in bounds)
    with pytest.raises(ValueError, match="rank 2 outside a world of 2"):
        shard_bounds(10, 3, 2, 2)


def test_two_gloo_processes_equal_one_process(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    pats = _data()
    reseeded = False
    for i, (method, opts) in enumerate(RUNS):
        ref = cluster(pats, 40, **_kwargs(method, opts))
        reseeded |= any(h["empty"] for h in ref.history)
        for rank in range(2):
            got = torch.load(tmp_path / f"rank{rank}_run{i}.pt")
            assert torch.equal(got["centroids"], ref.centroids), (method, rank)
            assert torch.equal(got["assignments"], ref.assignments), (method, rank)
            assert [(h["objective"], h["changed"], h["empty"]) for h in got["history"]] == \
                   [(h["objective"], h["changed"], h["empty"]) for h in ref.history], (method, rank)
    assert reseeded  # the gathered distances were used at least once
