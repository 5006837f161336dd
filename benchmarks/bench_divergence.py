"""Time what the KL from dense adds to a perplexity pass, on the embedded model (or any causal LM).

Measured in one run, on one device, on the first --tokens test tokens of a results folder:

  (a) plain     score_windows, per-token NLL only (what every scoring pass did before)
  (b) exact     (a) against the exact dense reference (full log-probabilities): KL + top-1 per token
  (c) checked   (b) plus the top-k KL of the same pass (what an exact run records as ``kl_topk``)
  (d) topk      (a) against a top-k reference (what a large-vocabulary preset runs)
  (e) load      reading the exact reference file once (every masked job does)

Each is the median of --repeats passes after a warm-up, printed as a ratio to (a).  The dense model
scores against its own reference, so the KL figures printed are 0 (a check); the cost does not
depend on the masks.

  PYTHONPATH=src python benchmarks/bench_divergence.py results/default
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from timing import median_seconds  # noqa: E402  (benchmarks/timing.py)
from apc.common.atomic import read_json  # noqa: E402
from apc.extraction.model import load_model  # noqa: E402
from apc.perplexity.divergence import load_reference, save_reference  # noqa: E402
from apc.perplexity.scoring import score_windows  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("outdir", type=Path, help="a finished results folder (its model, test tokens, config)")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--top-k", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    model, tok = load_model(read_json(a.outdir / "model" / "manifest.json"))
    windows = torch.from_numpy(np.load(a.outdir / "tokens" / "test.npy"))
    windows = windows[: max(1, a.tokens // windows.shape[1])]
    bos = tok.bos_token_id is not None
    n = len(windows) * (windows.shape[1] - 1)
    kw = dict(bos=bos, progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        for kind, k in (("exact", a.top_k), ("topk", a.top_k)):
            res = score_windows(model, windows, keep_reference=(kind, k), **kw)
            save_reference(Path(tmp) / f"{kind}.npz", res["reference"], kind=kind, seq_len=windows.shape[1])
        exact = load_reference(Path(tmp) / "exact.npz", n, windows.shape[1])
        topk = load_reference(Path(tmp) / "topk.npz", n, windows.shape[1])
        t = {"plain": median_seconds(lambda: score_windows(model, windows, **kw), a.repeats),
             "exact": median_seconds(lambda: score_windows(model, windows, reference=exact, **kw), a.repeats),
             "checked": median_seconds(lambda: score_windows(model, windows, reference=exact, check_top_k=a.top_k, **kw),
                                a.repeats),
             "topk": median_seconds(lambda: score_windows(model, windows, reference=topk, **kw), a.repeats),
             "load": median_seconds(lambda: load_reference(Path(tmp) / "exact.npz", n, windows.shape[1]), a.repeats)}
        size = (Path(tmp) / "exact.npz").stat().st_size
    res = score_windows(model, windows, reference=exact, check_top_k=a.top_k, **kw)
    print(f"{n} scored tokens, vocabulary {exact['logprobs'].shape[1]}, exact reference {size / 2**20:.0f} MiB, "
          f"{a.threads} thread(s); self-KL {res['token_kl'].mean():.2e}, top-1 {res['token_top1'].mean():.3f}")
    print("| pass | seconds | / plain |\n| --- | --- | --- |")
    for name, s in t.items():
        print(f"| {name} | {s:.3f} | {s / t['plain']:.3f} |")


if __name__ == "__main__":
    main()
