"""Hook overhead: time of a masked forward over the time of the dense forward, same windows, same run.

CPU by default; a tiny random Llama stands in for a real model.  Usage:
    PYTHONPATH=src python benchmarks/bench_mask_overhead.py [--device cpu] [--repeats 5]
Prints one line per (mode, projections): best-of-repeats seconds and ratio to dense
(dense is timed first and last; the smaller is used).  Other load on the machine skews it.
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers

from apc.arch import mlp_projections, projection_width
from apc.masking import install_interventions


def _time(model, windows, repeats):
    ts = []
    with torch.inference_mode():
        model(windows)  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(windows)
            if windows.is_cuda:
                torch.cuda.synchronize()
            ts.append(time.perf_counter() - t0)
    return min(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--k", type=int, default=1024, help="centroids per projection (pooled)")
    args = ap.parse_args()

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                   num_attention_heads=8, num_key_value_heads=4)
    model = transformers.LlamaForCausalLM(cfg).eval().to(args.device)
    windows = torch.randint(2, 1024, (args.windows, args.seq_len), device=args.device)
    windows[:, 0] = 1
    n_layers = len(mlp_projections(model))
    allp = ["gate", "up", "down", "down_in"]
    thr = {p: [0.05] * n_layers for p in allp}
    g = torch.Generator().manual_seed(0)
    cents = {p: torch.rand(1, args.k, projection_width(model, p), generator=g) < 0.6 for p in allp}
    dens = {p: 0.6 for p in allp}

    dense = _time(model, windows, args.repeats)
    rows = []
    for mode in ("sparse", "centroid", "centroid_only", "random"):
        for projs in (["gate", "up", "down"], ["down_in"]):
            with install_interventions(model, mode, projections=projs, thresholds=thr, centroids=cents,
                                       random_density=dens, skip_first_position=True):
                t = _time(model, windows, args.repeats)
            rows.append((mode, "+".join(projs), t))
    dense = min(dense, _time(model, windows, args.repeats))
    print(f"{'dense':>13} {'':<13}: {dense:.4f} s  ratio 1.00")
    for mode, projs, t in rows:
        print(f"{mode:>13} {projs:<13}: {t:.4f} s  ratio {t / dense:.2f}")


if __name__ == "__main__":
    main()
