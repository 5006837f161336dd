"""Hook overhead: time of a masked forward over the time of the dense forward, same windows, same run.

CPU by default; a tiny random Llama stands in for a real model unless ``--model`` names
``mistral7b-random`` (Mistral-7B shapes, random bf16 weights, for a GPU) or a model
manifest written by the workflow (e.g. results/default/model/manifest.json).  Usage:
    PYTHONPATH=src python benchmarks/bench_mask_overhead.py [--device cpu] [--repeats 5]
    PYTHONPATH=src python benchmarks/bench_mask_overhead.py --model results/default/model/manifest.json --seq-len 512 --windows 1
    PYTHONPATH=src python benchmarks/bench_mask_overhead.py --device cuda --model mistral7b-random --seq-len 2048 --k 2048
Prints one line per (mode, projections): best-of-repeats seconds and ratio to dense
(dense is timed first and last; the smaller is used).  Other load on the machine skews it.
``--grouped-k K`` adds ``centroid_only`` on ``down_in`` through the cluster-grouped FFN kernel
(``perplexity.kernel: grouped``) with K random centroids, beside the same mode through the hooks;
``--modes`` restricts the hook modes timed (``predicted`` and ``neuron_predicted`` get random linear
predictors: K scores, and a rank-64 factorisation scoring every neuron). ``--profile`` adds, per row,
the CUDA (or CPU) time of one forward by kernel: the share in matrix products and the top kernels
outside them, i.e. what the masks cost beyond the dense products.  ``--routes fused,torch`` (the
default where the fused kernels run, i.e. CUDA with Triton) times each mode through the one-pass
Triton masking (``apc.perplexity.fused``) and through the torch route of the same hooks, and prints
the per-window NLL of both and their largest difference (they must agree).
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers

from apc.common.projections import mlp_projections, projection_width
from apc.perplexity import fused
from apc.perplexity.masking import install_interventions


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
    ap.add_argument("--model", default="tiny", help="tiny | mistral7b-random | path to a model manifest.json")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--modes", default="sparse,centroid,centroid_only,random,threshold,predicted,neuron_predicted",
                    help="hook modes to time")
    ap.add_argument("--profile", action="store_true", help="break each row's forward down by kernel")
    ap.add_argument("--routes", default=None,
                    help="comma list of fused,torch (default: fused,torch where the fused kernels run, else torch)")
    ap.add_argument("--grouped-k", type=int, default=None,
                    help="also time centroid_only on down_in through the grouped kernel with this many centroids")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    if args.model in ("tiny", "mistral7b-random"):
        if args.model == "tiny":
            cfg = transformers.LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=1024,
                                           num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)
        else:  # Mistral-7B-v0.1 shapes
            cfg = transformers.MistralConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                                             num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8)
        dtype = torch.float32 if args.model == "tiny" else torch.bfloat16
        with torch.device(args.device):
            model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
        vocab = cfg.vocab_size
    else:
        from apc.extraction.model import load_model

        model, _ = load_model(args.model, device=args.device)
        vocab = model.config.vocab_size
    windows = torch.randint(2, vocab, (args.windows, args.seq_len), device=args.device)
    windows[:, 0] = 1
    n_layers = len(mlp_projections(model))
    allp = ["gate", "up", "down", "down_in"]
    # thresholds near the median |x| of random weights' activations; real runs use calibrated ones
    thr = {p: [0.05 if args.model == "tiny" else 0.3] * n_layers for p in allp}
    g = torch.Generator().manual_seed(0)
    cents = {p: torch.rand(1, args.k, projection_width(model, p), generator=g) < 0.6 for p in allp}
    dens = {p: 0.6 for p in allp}

    d_model = cfg.hidden_size if args.model in ("tiny", "mistral7b-random") else model.config.hidden_size
    dt = next(model.parameters()).dtype
    preds = {mode: {p: [_predictor(d_model, args.k if mode == "predicted" else projection_width(model, p),
                                   mode, args.device) for _ in range(n_layers)] for p in allp}
             for mode in ("predicted", "neuron_predicted")}

    profiles = []
    dense = _time(model, windows, args.repeats)
    if args.profile:
        profiles.append(("dense", "", _profile(model, windows)))
    routes = (args.routes or ("fused,torch" if fused.enabled(windows.device) else "torch")).split(",")
    rows, checks = [], []
    for mode in args.modes.split(","):
        for projs in (["gate", "up", "down"], ["down_in"]):
            nll = {}
            for route in routes:
                with install_interventions(model, mode, projections=projs, thresholds=thr, centroids=cents,
                                           random_density=dens, keep_thresholds=thr, predictors=preds.get(mode),
                                           neuron_density=dens, skip_first_position=True, fused=route == "fused"):
                    t = _time(model, windows, args.repeats)
                    if args.profile and route == routes[0]:
                        profiles.append((f"{mode} ({route})", "+".join(projs), _profile(model, windows)))
                with install_interventions(model, mode, projections=projs, thresholds=thr, centroids=cents,
                                           random_density=dens, keep_thresholds=thr, predictors=preds.get(mode),
                                           neuron_density=dens, skip_first_position=True, fused=route == "fused",
                                           seed=0):
                    nll[route] = _nll(model, windows)
                label = mode if len(routes) == 1 else f"{mode} ({route})"
                rows.append((label, "+".join(projs), t))
            if len(nll) > 1:
                a, b = nll.values()
                checks.append((mode, "+".join(projs), a, b))
    if args.grouped_k:
        from apc.perplexity.grouped import install_grouped

        gk = {"down_in": torch.rand(1, args.grouped_k, projection_width(model, "down_in"), generator=g) < 0.6}
        for kernel in ("hooks", "grouped"):
            if kernel == "hooks":
                ctx = install_interventions(model, "centroid_only", projections=["down_in"], thresholds=thr,
                                            centroids=gk, skip_first_position=True)
            else:
                ctx = install_grouped(model, "centroid_only", thresholds=thr, centroids=gk, skip_first_position=True)
            with ctx:
                t = _time(model, windows, args.repeats)
            rows.append((f"centroid_only K={args.grouped_k} ({kernel})", "down_in", t))
    if "fused" in routes:
        rows.extend(_top_n_rows(args.windows * args.seq_len, projection_width(model, "down_in"), windows.device,
                                args.repeats))
    dense = min(dense, _time(model, windows, args.repeats))
    print(f"model {args.model}, {n_layers} layers, {args.windows} x {args.seq_len} tokens, K={args.k}, {args.device}")
    print(f"{'dense':>13} {'':<13}: {dense:.4f} s  ratio 1.00")
    for mode, projs, t in rows:
        print(f"{mode:>13} {projs:<13}: {t:.4f} s  ratio {t / dense:.2f}", flush=True)
    for mode, projs, a, b in checks:
        print(f"NLL {mode} {projs}: per window {' '.join(f'{v:.6f}' for v in a.tolist())} ({routes[0]}) vs "
              f"{' '.join(f'{v:.6f}' for v in b.tolist())} ({routes[1]}); max |difference| "
              f"{(a - b).abs().max().item():.2e}")
    base = profiles[0][2][0] if profiles else None
    for mode, projs, (total, gemm, top) in profiles:
        print(f"profile {mode} {projs}: kernels {total * 1e3:.1f} ms ({total / base:.2f}x dense's), "
              f"matrix products {gemm * 1e3:.1f} ms "
              f"({gemm / total:.0%}); outside them: " + "; ".join(f"{n} {ms * 1e3:.1f} ms x{c}" for n, ms, c in top))


def _top_n_rows(n, width, device, repeats):
    """Rows of the table for the top-n selection alone (half of each row kept, uniform scores): the fused
    kernel (its tuned configuration) against ``torch.topk`` and the kth-value route of ``top_n_mask``."""
    from apc.clustering import top_n_mask

    score = torch.rand(n, width, device=device)
    k = width // 2
    out = []
    for name, fn in (("top-n fused", lambda: fused.top_n_float(score, k)),
                     ("top-n torch.topk", lambda: score.topk(k, dim=1)),
                     ("top-n kthvalue", lambda: top_n_mask(score, k))):
        fn()
        ts = []
        for _ in range(max(3, repeats)):
            torch.cuda.synchronize() if score.is_cuda else None
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize() if score.is_cuda else None
            ts.append(time.perf_counter() - t0)
        cfg = getattr(fused.top_n_tuned(), "best_config", None) if name == "top-n fused" and score.is_cuda else None
        out.append((f"{name} {n}x{width}" + (f" ({cfg})" if cfg else ""), "", min(ts)))
    return out


def _nll(model, windows) -> torch.Tensor:
    """``(n_windows,)`` float64: mean next-token NLL of each window (position 0 not scored)."""
    with torch.inference_mode():
        logits = model(windows).logits.float()
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), windows[:, 1:], reduction="none")
    return nll.double().mean(dim=1).cpu()


class _Predictor(torch.nn.Module):
    """A random stand-in predictor: ``(N, d_model) -> (N, n_out)`` scores, through a rank-64 factor for
    neuron scores (as the fitted neuron predictors are low rank)."""

    def __init__(self, d_model: int, n_out: int, low_rank: bool):
        super().__init__()
        self.d_model = d_model
        self.net = (torch.nn.Sequential(torch.nn.Linear(d_model, 64), torch.nn.Linear(64, n_out)) if low_rank
                    else torch.nn.Linear(d_model, n_out))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


def _predictor(d_model: int, n_out: int, mode: str, device: str) -> torch.nn.Module:
    return _Predictor(d_model, n_out, low_rank=mode == "neuron_predicted").to(device).eval()


def _profile(model, windows, top: int = 4):
    """One forward under torch.profiler: ``(kernel seconds, seconds in matrix products, [(name, seconds,
    calls)] of the ``top`` other kernels)``."""
    from torch.profiler import ProfilerActivity, profile

    cuda = windows.is_cuda
    acts = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with torch.inference_mode(), profile(activities=acts) as prof:
        model(windows)
        if cuda:
            torch.cuda.synchronize()
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, key, 0) > 0]
    if not cuda:  # CPU: aten ops only, so the totals do not count an op and its children twice
        events = [e for e in events if e.key.startswith("aten::")]
    is_gemm = lambda n: any(w in n.lower() for w in ("gemm", "matmul", "mm", "cutlass", "sm90_xmma", "nvjet", "linear"))
    total = sum(getattr(e, key) for e in events) / 1e6
    gemm = sum(getattr(e, key) for e in events if is_gemm(e.key)) / 1e6
    rest = sorted((e for e in events if not is_gemm(e.key)), key=lambda e: -getattr(e, key))[:top]
    return total, gemm, [(e.key[:60], getattr(e, key) / 1e6, e.count) for e in rest]


if __name__ == "__main__":
    main()
