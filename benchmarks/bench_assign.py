"""Time APC assignment and iteration against bare matrix products of the same shape.

Measured in one run, on one device (every product is exact on 0/1 data):

  (a)  bare     X @ C.T on already-unpacked patterns in --dtype (float32:
                TF32 on CUDA), (n x d) . (d x K)
  (a8) fp8      the same product in float8 e4m3, torch._scaled_mm, fp32 output
                (CUDA capability >= 8.9): the reference of the headline ratio
  (ai) int8     the same product through torch._int_mm, int32 output (CUDA)
  (b)  assign   one APC assignment pass with the --matmul product: stream
                packed chunks, unpack on the device, one product per block,
                argmax (= argmin distance)
  (c)  iterate  one full APC iteration: (b) plus per-cluster member sums and
                the capped top-k update
  (d)  --loop   a naive Python loop over centroids (paper style: per centroid,
                distances to all points elementwise), timed on a subsample and
                EXTRAPOLATED to n x K

Each is the median of --repeats runs after a warm-up, with
torch.cuda.synchronize() on CUDA, and printed as a ratio to (a) and, on CUDA,
to (a8), with the effective TFLOP/s (2 n d K over the time) and the peak GPU
memory of one iteration.  The streamed assignment is checked against the
argmax of (a) and of (a8).  --profile writes the CUDA kernel times of a few
iterations.  Synthetic bits at --density are generated directly on the
device.  Only torch and numpy are needed.

  PYTHONPATH=src python benchmarks/bench_assign.py                      # CPU-size defaults
  PYTHONPATH=src python benchmarks/bench_assign.py --device cuda --n 333824 --d 14336 --k 2048
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from apc.clustering.apc import capped_update  # noqa: E402
from apc.clustering.common import compute_dtype, default_block_rows, density_to_count  # noqa: E402
from apc.clustering.data import PackedPatterns  # noqa: E402
from apc.common.device import exact_matmul, resolve_device  # noqa: E402
from apc.clustering.distance import overlap  # noqa: E402
from apc.clustering.engine import assign_pass, resolve_accumulate  # noqa: E402
from apc.clustering.kernels import FP8_ONE, INT8_ONE, unpack_operand  # noqa: E402
from apc.clustering.lowp import MATMULS, fp8_supported, resolve_matmul  # noqa: E402
from apc.extraction.patterns import pack_torch, unpack_torch  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: dict, device: torch.device, repeats: int) -> dict:
    """Median seconds of each function: one warm-up each, then ``repeats`` rounds calling each once."""
    for fn in fns.values():
        fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def timeit(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_packed(n: int, d: int, density: float, device: torch.device, gen: torch.Generator, chunk: int) -> torch.Tensor:
    """Packed random bits ``(n, ceil(d/8))`` uint8 generated on ``device``."""
    if density == 0.5 and d % 8 == 0:
        return torch.randint(0, 256, (n, d // 8), dtype=torch.uint8, device=device, generator=gen)
    parts = []
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        parts.append(pack_torch(torch.rand((m, d), device=device, generator=gen) < density))
    return torch.cat(parts)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=65536, help="patterns")
    ap.add_argument("--d", type=int, default=1536, help="width (neurons)")
    ap.add_argument("--k", type=int, default=256, help="centroids")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--density", type=float, default=0.5, help="share of ones in the synthetic patterns")
    ap.add_argument("--centroid-density", type=float, default=0.5, help="share of ones kept per centroid")
    ap.add_argument("--chunk", type=int, default=65536, help="patterns per streamed chunk")
    ap.add_argument("--block-rows", type=int, default=None, help="rows unpacked at once (default: auto)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--matmul", default="auto", choices=list(MATMULS),
                    help="product of the assignment pass (auto: fp8 / int8 on CUDA, --dtype on CPU)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", default=None,
                    help="write the kernel-time table of --profile-iters full iterations to this file (CUDA)")
    ap.add_argument("--profile-iters", type=int, default=3)
    ap.add_argument("--accumulate", default="auto",
                    help="comma-separated ways to form member sums, each timed: auto, index_add, onehot, sorted, "
                         "packed (the first is the headline (c); auto = index_add on CPU, packed on CUDA)")
    ap.add_argument("--loop", action="store_true", help="also time the naive per-centroid loop (extrapolated)")
    ap.add_argument("--loop-n", type=int, default=None, help="points in the loop subsample (default min(n, chunk))")
    ap.add_argument("--loop-k", type=int, default=8, help="centroids timed in the loop")
    ap.add_argument("--cluster-iters", type=int, default=0,
                    help="also run cluster(method='apc') end to end for this many iterations")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    args = ap.parse_args(argv)

    logging.getLogger("apc").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dtype = compute_dtype(args.dtype, device)
    n, d, k = args.n, args.d, args.k
    gen = torch.Generator(device=device).manual_seed(args.seed)
    packed = make_packed(n, d, args.density, device, gen, args.chunk)
    pats = PackedPatterns([packed], d, sources=["synthetic"])
    n_keep = density_to_count(args.centroid_density, d)
    score = torch.rand((k, d), device=device, generator=gen)
    centroids = torch.zeros((k, d), dtype=torch.bool, device=device)
    centroids.scatter_(1, score.topk(n_keep, dim=1).indices, True)
    del score
    block = args.block_rows or default_block_rows(d, device, args.chunk)
    matmul = resolve_matmul(args.matmul, device, dtype)
    out = {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "n": n, "d": d, "k": k,
        "dtype": args.dtype, "chunk": args.chunk, "block_rows": block, "density": args.density,
        "centroid_density": args.centroid_density, "repeats": args.repeats, "matmul": matmul,
        "command": " ".join(["benchmarks/bench_assign.py"] + list(sys.argv[1:] if argv is None else argv)),
    }
    print(f"# {out['device']}  torch {torch.__version__}  threads {torch.get_num_threads()}  "
          f"n={n} d={d} K={k} dtype={args.dtype} matmul={matmul} chunk={args.chunk} block_rows={block}", flush=True)

    # (a) bare product on pre-unpacked data (all of it at once, as one product)
    x_full = unpack_torch(packed, d, dtype)
    c_mat = centroids.to(dtype)
    with exact_matmul(device):
        ref_assign = overlap(x_full, c_mat).argmax(dim=1)  # for the correctness check below

    assign = torch.full((n,), -1, dtype=torch.long, device=device)
    dist = torch.zeros(n, dtype=torch.float32, device=device)

    methods = [m for m in args.accumulate.split(",") if m]
    out["accumulate"] = {m: resolve_accumulate(m, device) for m in methods}

    def one_pass(accumulate: bool, method: str = methods[0]):
        return assign_pass(pats, centroids, assign, dist, kind="activation", chunk_size=args.chunk,
                           block_rows=block, dtype=dtype, accumulate=accumulate, accumulate_method=method,
                           matmul=matmul)

    one_pass(False)
    out["assign_matches_bare_argmax"] = bool(torch.equal(assign, ref_assign))

    # one-byte reference products on the whole pre-unpacked set (CUDA only)
    refs = {}
    if device.type == "cuda":
        rows = max(32, -(-n // 16) * 16)
        cols = -(-d // 16) * 16
        kp = max(32, -(-k // 16) * 16)
        one = torch.ones((), dtype=torch.float32, device=device)
        c_pad = torch.zeros((kp, cols), dtype=torch.uint8, device=device)
        c_pad[:k, :d] = centroids.to(torch.uint8)
        if fp8_supported(device):
            x8 = unpack_operand(packed, d, rows, cols, FP8_ONE)[0].view(torch.float8_e4m3fn)
            c8 = (c_pad * FP8_ONE).view(torch.float8_e4m3fn)
            refs["fp8"] = lambda: torch._scaled_mm(x8, c8.t(), scale_a=one, scale_b=one, out_dtype=torch.float32)
            out["fp8_argmax_matches_bare_argmax"] = bool(torch.equal(refs["fp8"]()[:n, :k].argmax(dim=1), ref_assign))
        xi = unpack_operand(packed, d, rows, cols, INT8_ONE)[0].view(torch.int8)
        ci = c_pad.view(torch.int8)
        refs["int8"] = lambda: torch._int_mm(xi, ci.t())
        out["int8_argmax_matches_bare_argmax"] = bool(torch.equal(refs["int8"]()[:n, :k].argmax(dim=1), ref_assign))
    del ref_assign
    res = one_pass(True)

    def bare():
        with exact_matmul(device):
            return overlap(x_full, c_mat)

    def full_iteration(method: str):
        r = one_pass(True, method)
        return capped_update(r.sums, r.counts, centroids, n_keep)

    for method in methods[1:]:  # every way of summing members gives the same sums
        if not torch.equal(one_pass(True, method).sums, res.sums):
            raise SystemExit(f"accumulate={method} disagrees with {methods[0]}")

    # interleaved rounds, so that load from other processes hits every variant alike
    fns = {"bare": bare, **{f"bare_{name}": fn for name, fn in refs.items()}, "assign": lambda: one_pass(False)}
    for method in methods:
        fns[f"iteration[{method}]"] = lambda method=method: full_iteration(method)
    fns["update"] = lambda: capped_update(res.sums, res.counts, centroids, n_keep)
    times = time_interleaved(fns, device, args.repeats)
    del x_full
    refs.clear()
    x8 = xi = None  # noqa: F841  (free the one-byte copies before the memory reading below)
    t_bare, t_assign, t_update = times["bare"], times["assign"], times["update"]
    t_iter = times[f"iteration[{methods[0]}]"]
    flops = 2.0 * n * d * k
    t_ref = times.get("bare_fp8", t_bare)
    out.update(bare_s=t_bare, bare_tflops=flops / t_bare / 1e12, assign_s=t_assign, iteration_s=t_iter,
               update_only_s=t_update, iteration_by_accumulate_s={m: times[f"iteration[{m}]"] for m in methods},
               iteration_tflops=flops / t_iter / 1e12, assign_tflops=flops / t_assign / 1e12)
    for name in ("fp8", "int8"):
        if f"bare_{name}" in times:
            out[f"bare_{name}_s"] = times[f"bare_{name}"]
            out[f"bare_{name}_tflops"] = flops / times[f"bare_{name}"] / 1e12
    ref_name = "fp8 product" if "bare_fp8" in times else "bare product"
    print(f"(a)  bare product ({args.dtype:8s}) {t_bare * 1e3:10.2f} ms   {t_bare / t_ref:5.2f}x   "
          f"{out['bare_tflops']:8.1f} TFLOP/s")
    for name in ("fp8", "int8"):
        if f"bare_{name}" in times:
            t = times[f"bare_{name}"]
            print(f"(a{name[0]}) bare product ({name:8s}) {t * 1e3:10.2f} ms   {t / t_ref:5.2f}x   "
                  f"{flops / t / 1e12:8.1f} TFLOP/s")
    print(f"(b)  APC assignment pass ({matmul}) {t_assign * 1e3:8.2f} ms   {t_assign / t_ref:5.2f}x   "
          f"{out['assign_tflops']:8.1f} TFLOP/s")
    for method in methods:
        t = times[f"iteration[{method}]"]
        print(f"(c)  APC full iteration ({matmul})  {t * 1e3:8.2f} ms   {t / t_ref:5.2f}x   "
              f"{flops / t / 1e12:8.1f} TFLOP/s   (member sums by {out['accumulate'][method]})")
    print(f"     of which top-k update {t_update * 1e3:8.2f} ms   (ratios to the {ref_name})", flush=True)
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        resident = torch.cuda.memory_allocated(device)
        full_iteration(methods[0])
        sync(device)
        out["iteration_peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        out["iteration_working_gib"] = (torch.cuda.max_memory_allocated(device) - resident) / 2**30
        out["resident_gib"] = resident / 2**30
        out["packed_gib"] = packed.numel() / 2**30
        print(f"     iteration peak GPU memory {out['iteration_peak_gpu_gib']:.2f} GiB "
              f"({out['iteration_working_gib']:.2f} GiB above the {out['resident_gib']:.2f} GiB held before it, "
              f"of which {out['packed_gib']:.2f} GiB are the packed patterns)", flush=True)
    if args.profile and device.type == "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(args.profile_iters):
                full_iteration(methods[0])
            sync(device)
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
        table += "\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
        Path(args.profile).parent.mkdir(parents=True, exist_ok=True)
        Path(args.profile).write_text(f"# {args.profile_iters} full iterations: {out['command']}\n{table}\n")
        print(table, flush=True)

    if args.loop:
        m = min(n, args.loop_n or args.chunk)
        kl = min(k, args.loop_k)
        x = unpack_torch(packed[:m], d, torch.float32)
        cl = centroids[:kl].float()

        def naive_loop():
            cols = []
            for i in range(kl):  # paper style: one elementwise pass over all points per centroid
                cols.append((x * (1.0 - cl[i])).sum(dim=1))
            return torch.stack(cols, dim=1).argmin(dim=1)

        t_loop = timeit(naive_loop, device, args.repeats)
        t_loop_full = t_loop * (n / m) * (k / kl)
        out.update(loop_points=m, loop_centroids=kl, loop_measured_s=t_loop, loop_extrapolated_s=t_loop_full)
        print(f"(d) naive centroid loop {t_loop_full * 1e3:10.2f} ms   {t_loop_full / t_bare:.2f}x   "
              f"EXTRAPOLATED from {kl} centroids x {m} points ({t_loop * 1e3:.2f} ms measured)", flush=True)
        del x

    if args.cluster_iters:
        from apc.clustering import cluster

        del assign, dist, res
        t0 = time.perf_counter()
        result = cluster(pats, k, method="apc", density=args.centroid_density, seed=args.seed,
                         max_iter=args.cluster_iters, device=device, chunk_size=args.chunk, dtype=args.dtype,
                         block_rows=block, accumulate=methods[0], matmul=matmul)
        sync(device)
        total = time.perf_counter() - t0
        per_iter = [h["seconds"] for h in result.history]
        out.update(cluster_total_s=total, cluster_iteration_s=per_iter)
        print(f"(e) cluster(method='apc', max_iter={args.cluster_iters}): {total:.2f} s in all (init included); "
              f"per iteration {', '.join(f'{t * 1e3:.0f}' for t in per_iter)} ms", flush=True)

    print(f"# check: streamed {matmul} assignment == argmax of the bare {args.dtype} product: "
          f"{out['assign_matches_bare_argmax']}")
    for name in ("fp8", "int8"):
        if f"{name}_argmax_matches_bare_argmax" in out:
            print(f"# check: argmax of the bare {name} product == argmax of the bare {args.dtype} product: "
                  f"{out[f'{name}_argmax_matches_bare_argmax']}")
    out["ratio_assign"] = t_assign / t_bare
    out["ratio_iteration"] = t_iter / t_bare
    if "bare_fp8" in times:
        out["ratio_assign_to_fp8"] = t_assign / times["bare_fp8"]
        out["ratio_iteration_to_fp8"] = t_iter / times["bare_fp8"]
        print(f"# one full iteration = {out['ratio_iteration_to_fp8']:.2f}x the fp8 product (goal <= 1.5)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
