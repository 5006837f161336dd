"""One neuron-experts cell, layer by layer: fit the experts on train patterns, fit the learned router on
train FFN inputs, and score every router's coverage on the held-out test tokens.

Routers compared (:mod:`apc.clustering.routers`): ``best`` (the k experts holding most of the token's
active neurons: the coverage bound), ``oracle`` (top-k by true activation mass, needs the weights),
``analytic`` (CMoE's, needs the weights) and ``learned`` (:class:`ClusterPredictor` trained with
cross-entropy on each train token's ``best`` top-1 expert id; its top-k scores pick k experts).
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from ..clustering.device import resolve_device
from ..clustering.experts import ExpertSet, best_experts, best_share, coverage_sums, expert_counts, fit_experts
from ..clustering.routers import AnalyticRouter, OracleRouter, representatives
from ..common.progress import get_logger
from .cell import layer_data, stored_layers
from .fit import fit_cluster_predictor
from .models import ffn_flops

log = get_logger("apc.prediction")


def _sum_into(total: dict, part: dict) -> None:
    for key, v in part.items():
        total[key] = total.get(key, 0) + v


def router_coverage(bits: torch.Tensor, x: torch.Tensor, es: ExpertSet, routers: dict[str, Callable],
                    ks: Sequence[int]) -> dict:
    """``{router: {k: coverage_sums}}`` on ``bits: (T, W)`` bool patterns and ``x: (T, d_model)`` FFN inputs
    of the same tokens; ``routers``: name -> ``x -> (T, E)`` scores; ``best`` is always added."""
    scores = {"best": expert_counts(bits, es)}
    with torch.no_grad():
        for name, r in routers.items():
            scores[name] = r(x).to(bits.device)
    return {name: {int(k): coverage_sums(bits, es, best_experts(s, k)) for k in ks} for name, s in scores.items()}


def fit_expert_cell(ffn_root, pattern_root, projection: str, share: float, n_experts: int, *, ks: Sequence[int],
                    max_iter: int = 10, max_tokens: int | None = None, seed: int = 0, device: str = "auto",
                    fit: dict | None = None, weights: Callable | None = None, layers: Sequence[int] | None = None,
                    chunk_size: int = 4096) -> tuple[list[ExpertSet], list, list, dict]:
    """Experts, learned routers and representatives per layer, with a coverage report.

    ``weights(layer) -> (gate_weight, up_weight, act)`` (``(d_ff, d_model)`` tensors) adds the analytic and
    oracle routers to the test coverage.  Returns ``(sets, learned routers, representatives (E,) per layer,
    report)``; ``report["layers"]`` holds per layer ``{layer, iterations, seconds, train: {router: {k: ...}},
    test: {...}}`` with coverage, shared coverage and density, and ``report["total"]`` the test sums over layers.
    """
    dev = resolve_device(device)
    layers = stored_layers(ffn_root) if layers is None else list(layers)
    sets, learned, reps, rows, total = [], [], [], [], {}
    for l in layers:
        t0 = time.perf_counter()
        x, pats = layer_data(ffn_root, pattern_root, "train", projection, l, max_tokens, seed + l)
        bits = pats.rows(np.arange(pats.n), dev, torch.bool)
        es, info = fit_experts(bits, share, n_experts, max_iter=max_iter, device=dev)
        rep = representatives(bits, es)
        labels = expert_counts(bits, es).argmax(dim=1).cpu()
        router, loss = fit_cluster_predictor(x, labels, es.n_experts, seed=seed + l, device=str(dev), **(fit or {}))
        routers = {"learned": router.to(dev)}
        if weights is not None:
            g, u, act = weights(l)
            routers["analytic"] = AnalyticRouter.from_weights(g, u, rep, act).to(dev)
            routers["oracle"] = OracleRouter(g, u, es, act).to(dev)
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32)).to(dev)
        train = router_coverage(bits, xt, es, routers, ks)
        tx, tp = layer_data(ffn_root, pattern_root, "test", projection, l)
        test_sums: dict = {}
        for s in range(0, tp.n, chunk_size):
            idx = np.arange(s, min(s + chunk_size, tp.n))
            part = router_coverage(tp.rows(idx, dev, torch.bool), torch.as_tensor(np.asarray(tx[idx], dtype=np.float32)).to(dev),
                                   es, routers, ks)
            for name, by_k in part.items():
                for k, sums in by_k.items():
                    _sum_into(test_sums.setdefault(name, {}).setdefault(k, {}), sums)
        for name, by_k in test_sums.items():
            for k, sums in by_k.items():
                _sum_into(total.setdefault(name, {}).setdefault(k, {}), sums)
        secs = time.perf_counter() - t0
        w = es.width
        rows.append({"layer": l, "n_train": int(bits.shape[0]), "iterations": info["iterations"], "moved": info["moved"],
                     "router_loss": loss, "seconds": secs,
                     "train": {n: {k: best_share(s, w) for k, s in b.items()} for n, b in train.items()},
                     "test": {n: {k: best_share(s, w) for k, s in b.items()} for n, b in test_sums.items()}})
        log.info("experts s=%g E=%d L%02d: %d iterations, test coverage k=%d best %.3f learned %.3f, %.1f s",
                 share, n_experts, l, info["iterations"], ks[0], rows[-1]["test"]["best"][ks[0]]["coverage"],
                 rows[-1]["test"]["learned"][ks[0]]["coverage"], secs)
        sets.append(es)
        learned.append(router.cpu())
        reps.append(rep.tolist())
    w = sets[0].width
    d_model = learned[0].d_model
    ffn = ffn_flops(d_model, w)
    report = {"projection": projection, "shared_share": len(sets[0].shared) / w, "requested_share": float(share),
              "n_experts": int(n_experts), "size": sets[0].size, "width": w, "layers_fitted": layers,
              "router_flops_share": {"learned": learned[0].flops_per_token() / ffn,
                                     "analytic": 2 * 2 * d_model * n_experts / ffn, "oracle": 0.0},
              "layers": rows,
              "total": {n: {k: best_share(s, w) for k, s in b.items()} for n, b in total.items()}}
    return sets, learned, reps, report
