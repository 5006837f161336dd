"""Extraction cost against a plain forward pass over the same windows, measured in one run.

    python benchmarks/bench_extract.py --outdir results/default --windows 8

Loads the model of ``<outdir>/model/manifest.json`` and the first ``--windows``
train windows of ``<outdir>/tokens/train.npy``, then times (a) a plain forward
pass, (b) the threshold-calibration pass (histograms) and (c) the pattern
extraction pass (threshold, bit-pack, write), each over those same windows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from apc.common.atomic import read_npy  # noqa: E402
from apc.extraction.extract import forward_windows, calibrate_thresholds, extract_patterns  # noqa: E402
from apc.extraction.model import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--outdir", default="results/default")
    ap.add_argument("--windows", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--projections", default="gate,up,down,down_in")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.outdir)
    model, tok = load_model(out / "model" / "manifest.json")
    windows = torch.from_numpy(read_npy(out / "tokens" / "train.npy"))[: args.windows]
    projs = args.projections.split(",")
    skip = tok.bos_token_id is not None
    forward_windows(model, windows[:1], "cpu", "warm-up")
    plain = forward_windows(model, windows, "cpu", "plain forward")
    t0 = time.perf_counter()
    th = calibrate_thresholds(model, windows, projs, 0.5, skip_first=skip)
    calib = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        summary = extract_patterns(model, windows, th, projs, tmp, "train", {}, skip_first=skip)
        extract = time.perf_counter() - t0
    plain2 = forward_windows(model, windows, "cpu", "plain forward again")
    base = min(plain, plain2)
    n_tok = summary["n_tokens"]
    print(f"{len(windows)} windows x {windows.shape[1]} tokens, {summary['n_layers']} layers, projections {projs}, "
          f"{args.threads} threads")
    print(f"plain forward        {base:8.2f} s   1.00x")
    print(f"calibration pass     {calib:8.2f} s   {calib / base:.2f}x")
    print(f"extraction pass      {extract:8.2f} s   {extract / base:.2f}x")
    print(f"pattern store        {summary['store_bytes'] / 1e6:8.2f} MB  {summary['store_bytes'] / summary['ideal_bytes']:.4f}x "
          f"the n*d/8 ideal ({n_tok} tokens)")


if __name__ == "__main__":
    main()
