"""Time one assignment pass of weighted APC (8-bit magnitude codes) against binary APC.

Both stream the same packed patterns in chunks; the weighted pass also reads
one byte per (token, neuron) and decodes it on the device.  Medians of
--repeats runs after a warm-up, printed as a ratio to the binary pass
measured in the same run.

  PYTHONPATH=src python benchmarks/bench_weighted.py
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from timing import median_seconds  # noqa: E402  (benchmarks/timing.py)

from apc.clustering.common import default_block_rows  # noqa: E402
from apc.clustering.data import PackedPatterns, WeightedPatterns  # noqa: E402
from apc.clustering.engine import assign_pass  # noqa: E402
from apc.extraction.magnitudes import MagnitudeCodec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--d", type=int, default=1536)
    ap.add_argument("--k", type=int, default=128)
    ap.add_argument("--chunk", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.RandomState(0)
    x = rng.lognormal(0, 1, (args.n, args.d)).astype(np.float32)
    codec = MagnitudeCodec(float(np.median(x)))
    bits = x >= codec.reference
    plain = PackedPatterns.from_bits(bits)
    weighted = WeightedPatterns([np.packbits(bits, axis=1)], args.d, [codec.encode(torch.from_numpy(x)).numpy()],
                                tables=[codec.table()])
    c = torch.from_numpy(rng.rand(args.k, args.d) < 0.6)
    dev = torch.device("cpu")
    block = default_block_rows(args.d, dev, args.chunk)

    def one_pass(data):
        assign = torch.full((data.n,), -1, dtype=torch.int64)
        dist = torch.zeros(data.n)
        assign_pass(data, c, assign, dist, kind="activation", chunk_size=args.chunk, block_rows=block,
                    dtype=torch.float32)

    t_bin = median_seconds(lambda: one_pass(plain), args.repeats)
    t_w = median_seconds(lambda: one_pass(weighted), args.repeats)
    print(json.dumps({"n": args.n, "d": args.d, "k": args.k, "binary_pass_s": round(t_bin, 4),
                      "weighted_pass_s": round(t_w, 4), "weighted_over_binary": round(t_w / t_bin, 3),
                      "store_bytes_per_value": {"bits": 1 / 8, "magnitude_codes": 1}}))


if __name__ == "__main__":
    main()
