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

from ..common.device import resolve_device
from ..clustering.experts import (ExpertSet, best_experts, best_share, coverage_parts, coverage_sums, expert_counts,
                                  expert_masks, fit_experts)
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
                    ks: Sequence[int], mass: torch.Tensor | None = None) -> dict:
    """``{router: {k: coverage_sums}}`` on ``bits: (T, W)`` bool patterns and ``x: (T, d_model)`` FFN inputs
    of the same tokens; ``routers``: name -> ``x -> (T, E)`` scores; ``best`` is always added.
    ``mass: (T, W)`` (``|down_in|``) adds the mass coverage."""
    parts = coverage_parts(bits, es, mass)
    scores = {"best": parts["counts"]}
    with torch.no_grad():
        for name, r in routers.items():  # the oracle's scores are the expert mass, when it is given
            scores[name] = parts["expert_mass"] if isinstance(r, OracleRouter) and mass is not None else r(x).to(bits.device)
    return {name: {int(k): coverage_sums(parts, es, best_experts(s, k)) for k in ks} for name, s in scores.items()}


def ffn_mass(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, act: Callable) -> torch.Tensor:
    """``|act(x gate^T) * (x up^T)|``: ``(T, d_ff)`` float32 magnitudes of the FFN neurons for ``x: (T, d_model)``."""
    g, u = gate.to(x.device, torch.float32), up.to(x.device, torch.float32)
    with torch.no_grad():
        return (act(x @ g.T) * (x @ u.T)).abs()


def top_markers(mass: torch.Tensor, share: float) -> torch.Tensor:
    """CMoE's activation markers: per token, the ``share`` of neurons of largest ``mass`` ``(T, W)`` -> bool."""
    n = max(1, int(round(float(share) * mass.shape[1])))
    return torch.zeros_like(mass, dtype=torch.bool).scatter_(1, mass.topk(n, dim=1).indices, True)


def fit_expert_cell(ffn_root, pattern_root, projection: str, share: float, n_experts: int, *, ks: Sequence[int],
                    max_iter: int = 10, max_tokens: int | None = None, seed: int = 0, device: str = "auto",
                    fit: dict | None = None, weights: Callable | None = None, layers: Sequence[int] | None = None,
                    chunk_size: int = 4096, markers: float | None = None) -> tuple[list[ExpertSet], list, list, dict]:
    """Experts, learned routers and representatives per layer, with a coverage report.

    ``weights(layer) -> (gate_weight, up_weight, act)`` (``(d_ff, d_model)`` tensors) adds the analytic and
    oracle routers and the mass coverage, and labels the learned router's tokens by the expert of most
    activation mass (else most active neurons).  ``markers``: the neurons' activation vectors that are
    clustered: None = the stored binary patterns; a share q = CMoE's markers, each token's top-q neurons
    by ``|down_in|`` (needs ``weights``).  The shared set is the most frequent neurons of those vectors.  Returns ``(sets, learned routers, representatives (E,) per layer,
    report)``; ``report["layers"]`` holds per layer ``{layer, iterations, seconds, train: {router: {k: ...}},
    test: {...}}`` with coverage, shared coverage and density, and ``report["total"]`` the test sums over layers.
    """
    dev = resolve_device(device)
    ks = [int(k) for k in ks if int(k) <= int(n_experts)]  # more experts than there are: left out
    if not ks:
        raise ValueError(f"no k in the coverage report's ks is at most the {n_experts} experts")
    layers = stored_layers(ffn_root) if layers is None else list(layers)
    sets, learned, reps, rows, total = [], [], [], [], {}
    for l in layers:
        t0 = time.perf_counter()
        x, pats = layer_data(ffn_root, pattern_root, "train", projection, l, max_tokens, seed + l)
        bits = pats.rows(np.arange(pats.n), dev, torch.bool)
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32)).to(dev)
        w = weights(l) if weights is not None else None
        mass = ffn_mass(xt, *w) if w is not None else None
        if markers is not None and mass is None:
            raise ValueError("activation markers (a top share of |down_in|) need the FFN weights")
        marks = bits if markers is None else top_markers(mass, markers)
        es, info = fit_experts(marks, share, n_experts, max_iter=max_iter, device=dev)
        rep = representatives(marks, es)
        labels = (expert_counts(bits, es) if mass is None else mass @ expert_masks(es, False).T.float().to(dev))
        labels = labels.argmax(dim=1).cpu()
        router, loss = fit_cluster_predictor(x, labels, es.n_experts, seed=seed + l, device=str(dev), **(fit or {}))
        routers = {"learned": router.to(dev)}
        if w is not None:
            g, u, act = w
            routers["analytic"] = AnalyticRouter.from_weights(g, u, rep, act).to(dev)
            routers["oracle"] = OracleRouter(g, u, es, act).to(dev)
        train = router_coverage(bits, xt, es, routers, ks, mass)
        tx, tp = layer_data(ffn_root, pattern_root, "test", projection, l)
        test_sums: dict = {}
        for s in range(0, tp.n, chunk_size):
            idx = np.arange(s, min(s + chunk_size, tp.n))
            xs = torch.as_tensor(np.asarray(tx[idx], dtype=np.float32)).to(dev)
            part = router_coverage(tp.rows(idx, dev, torch.bool), xs, es, routers, ks,
                                   ffn_mass(xs, *w) if w is not None else None)
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
    report = {"projection": projection, "markers": "pattern" if markers is None else f"top {markers:g} of |x|",
              "shared_share": len(sets[0].shared) / w, "requested_share": float(share),
              "n_experts": int(n_experts), "size": sets[0].size, "width": w, "layers_fitted": layers,
              "router_flops_share": {"learned": learned[0].flops_per_token() / ffn,
                                     "analytic": 2 * 2 * d_model * n_experts / ffn, "oracle": 0.0},
              "layers": rows,
              "total": {n: {k: best_share(s, w) for k, s in b.items()} for n, b in total.items()}}
    return sets, learned, reps, report
