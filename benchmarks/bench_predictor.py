"""Predictor cost: time of a predictor's forward over the time of the SwiGLU FFN's forward, same run.

The FFN is ``down(act(gate(x)) * up(x))``, bias-free, at the embedded model's shapes
(d_model 576, d_ff 1536) by default or at Mistral-7B shapes with ``--mistral``.
Predictors: cluster ``linear`` and ``mlp`` (K centroids), and the neuron-level
baseline at the rank whose FLOPs match the linear predictor's.  Usage:
    PYTHONPATH=src python benchmarks/bench_predictor.py [--threads 2] [--tokens 512]
    PYTHONPATH=src python benchmarks/bench_predictor.py --device cuda --mistral --tokens 2048 --k 1024
Prints best-of-repeats seconds per forward, the ratio to the FFN and the FLOPs share.
Predictors run in their deployed form (standardisation folded into the first product).
"with mask" adds the selection: the centroid row of the argmax, or the top-k neurons.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from apc.prediction import ClusterPredictor, NeuronPredictor, ffn_flops, fold_standardization, matched_rank


def _time(fn, repeats: int, cuda: bool) -> float:
    best = float("inf")
    with torch.inference_mode():
        fn()  # warm-up
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--mistral", action="store_true", help="d_model 4096, d_ff 14336 instead of 576, 1536")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--k", type=int, default=128, help="centroids of the cluster predictors")
    ap.add_argument("--hidden", type=int, default=256, help="hidden width of the mlp predictor")
    ap.add_argument("--density", type=float, default=0.6, help="kept share of the masks")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: float32 on CPU, bfloat16 on CUDA)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    dtype = getattr(torch, args.dtype or ("bfloat16" if cuda else "float32"))
    d, f = (4096, 14336) if args.mistral else (576, 1536)
    torch.manual_seed(0)
    with torch.device(dev):
        x = torch.randn(args.tokens, d, dtype=dtype)
        w_gate, w_up = (torch.randn(f, d, dtype=dtype) / d**0.5 for _ in range(2))
        w_down = torch.randn(d, f, dtype=dtype) / f**0.5
        cents = torch.rand(args.k, f) < args.density
    n_keep = round(args.density * f)

    def ffn():
        return F.linear(F.silu(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)

    preds = {"linear": ClusterPredictor(d, args.k, "linear"), "mlp": ClusterPredictor(d, args.k, "mlp", args.hidden)}
    r = matched_rank(preds["linear"].flops_per_token(), d, f)
    preds[f"neuron r={r}"] = NeuronPredictor(d, f, r)
    rows = []
    t_ffn = _time(ffn, args.repeats, cuda)
    for name, p in preds.items():
        p = fold_standardization(p).to(device=dev, dtype=dtype).eval()
        if isinstance(p, ClusterPredictor):
            def run(p=p):
                return cents[p(x).argmax(dim=1)]
        else:
            def run(p=p):  # >= the k-th largest score: the top-k mask barring ties, cheaper than topk on CPU
                scores = p(x)
                return scores >= scores.kthvalue(f - n_keep + 1, dim=1, keepdim=True).values
        rows.append((name, p.flops_per_token(), _time(lambda: p(x), args.repeats, cuda), _time(run, args.repeats, cuda)))
    t_ffn = min(t_ffn, _time(ffn, args.repeats, cuda))
    print(f"d_model {d}, d_ff {f}, {args.tokens} tokens, K={args.k}, {dtype}, {dev}, "
          f"{torch.get_num_threads()} threads; FFN {t_ffn * 1e3:.3f} ms")
    for name, flops, t, t_mask in rows:
        print(f"{name:>14}: forward {t * 1e3:8.3f} ms  ratio {t / t_ffn:.3f}  | with mask {t_mask * 1e3:8.3f} ms  "
              f"ratio {t_mask / t_ffn:.3f}  | FLOPs share {flops / ffn_flops(d, f):.4f}")


if __name__ == "__main__":
    main()
