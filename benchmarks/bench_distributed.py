"""Data-parallel clustering over torch.distributed: exactness against one process, and iteration time.

    python benchmarks/bench_distributed.py --device cuda --n 333824 --d 14336 --k 2048 --world 1,2,4,8
    python benchmarks/bench_distributed.py --device cpu --n 4096 --d 512 --k 64 --world 1,2      # gloo, a check

For each world size W (NCCL on CUDA with NVLink multicast off, gloo on CPU), W processes cluster the
same seeded synthetic patterns with ``distributed=True``; rank 0 saves the centroids, assignments and
per-iteration history, which must equal the one-process run bit for bit, for every method.  Timing:
the median over ``--repeats`` of a ``--iters``-iteration run (after a warm-up), per iteration, and its
ratio to one process.  Needs only torch and numpy (and this checkout's ``src``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from apc.clustering import PackedPatterns, cluster  # noqa: E402


def patterns(n: int, d: int, density: float, seed: int) -> PackedPatterns:
    """Seeded random patterns ``(n, d)`` of the given density, packed; the same on every rank."""
    rng = np.random.default_rng(seed)
    bits = np.empty((n, d), dtype=bool)
    for lo in range(0, n, 65536):
        hi = min(n, lo + 65536)
        bits[lo:hi] = rng.random((hi - lo, d), dtype=np.float32) < density
    return PackedPatterns.from_bits(bits)


def _kwargs(args, method: str, device: str) -> dict:
    return dict(method=method, density=0.6, seed=0, device=device, chunk_size=args.chunk_size, max_iter=args.iters)


def _run(args, method: str, device: str, distributed: bool, pats: PackedPatterns):
    """Time ``--repeats`` runs of ``--iters`` iterations; return ``(result of the last, seconds per iteration)``."""
    times, res = [], None
    for i in range(args.repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = cluster(pats, args.k, distributed=distributed, **_kwargs(args, method, device))
        if device == "cuda":
            torch.cuda.synchronize()
        if i:  # the first run warms up kernels and allocators
            times.append((time.perf_counter() - t0) / max(1, len(res.history)))
    return res, statistics.median(times)


def _worker(rank: int, world: int, args, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    from apc.clustering.distributed import init_process_group

    backend = "nccl" if args.device == "cuda" else "gloo"
    init_process_group(backend, rank, world, f"file://{init_file}", timeout_s=1800)
    device = f"cuda:{rank % torch.cuda.device_count()}" if args.device == "cuda" else "cpu"
    if args.device == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    try:
        pats = patterns(args.n, args.d, args.data_density, args.seed)
        for method in args.methods:
            res, per_iter = _run(args, method, device, True, pats)
            if rank == 0:
                torch.save({"centroids": res.centroids, "assignments": res.assignments, "history": res.history,
                            "per_iter": per_iter}, f"{out_dir}/w{world}_{method}.pt")
    finally:
        dist.destroy_process_group()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--n", type=int, default=333_824)
    ap.add_argument("--d", type=int, default=14_336)
    ap.add_argument("--k", type=int, default=2048)
    ap.add_argument("--data-density", type=float, default=0.5)
    ap.add_argument("--world", default="1,2", help="comma-separated world sizes (1 = one process, no group)")
    ap.add_argument("--methods", default="apc,apc_balanced", type=lambda s: s.split(","))
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-size", type=int, default=65536)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    worlds = [int(w) for w in args.world.split(",")]
    if args.device == "cuda" and max(worlds) > torch.cuda.device_count():
        ap.error(f"--world {max(worlds)} needs that many GPUs; this machine has {torch.cuda.device_count()}")
    os.environ["NCCL_NVLS_ENABLE"] = "0"
    os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
    print(f"device {args.device}, N = {args.n:,}, d = {args.d:,}, K = {args.k:,}, {args.iters} iterations, "
          f"median of {args.repeats}", flush=True)
    pats = patterns(args.n, args.d, args.data_density, args.seed)
    one = {m: _run(args, m, "cuda:0" if args.device == "cuda" else "cpu", False, pats) for m in args.methods}
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        print("| method | world | per iteration (ms) | ratio to one process | exact |")
        print("| --- | ---: | ---: | ---: | --- |")
        for m, (ref, t1) in one.items():
            print(f"| {m} | 1 (no group) | {t1 * 1e3:.2f} | 1.00 | reference |")
        for w in worlds:
            if w == 1:
                continue
            mp.spawn(_worker, args=(w, args, f"{tmp}/init{w}", tmp), nprocs=w, join=True)
            for m, (ref, t1) in one.items():
                got = torch.load(f"{tmp}/w{w}_{m}.pt")
                exact = (torch.equal(got["centroids"], ref.centroids) and torch.equal(got["assignments"], ref.assignments)
                         and [(h["objective"], h["changed"], h["empty"]) for h in got["history"]]
                         == [(h["objective"], h["changed"], h["empty"]) for h in ref.history])
                ok &= exact
                print(f"| {m} | {w} | {got['per_iter'] * 1e3:.2f} | {got['per_iter'] / t1:.2f} | "
                      f"{'yes' if exact else 'NO'} |", flush=True)
    print("all runs exact" if ok else "MISMATCH: a distributed run differs from one process")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
