"""Score one point of a neuron-experts frontier line (:mod:`apc.common.neuron_experts`).

Every token of a layer keeps the shared set plus the ``k`` routed experts its router scores highest
from the MLP input: the ``predicted`` mode with one "centroid" per expert (its members plus the shared
set, ``top_m = k``), so the mask is decided before the FFN and every product runs on the kept neurons
only.  ``k`` is chosen so that the compute share (kept neurons plus the router's FLOPs) lies nearest
the point's share.  In the batch view, ``grouped`` is the union itself: after the permutation every
expert is a contiguous block, so a batch reads the shared block and each chosen expert's block once.
"""

from __future__ import annotations

import torch
from torch import nn

from apc.clustering.experts import ExpertSet, expert_masks
from apc.clustering.routers import AnalyticRouter, OracleRouter, ffn_weights
from apc.common.neuron_experts import choose_k, parse_expert_line
from apc.perplexity.accounting import ffn_share, product_shares, product_weights
from apc.perplexity.maskargs import Masks
from apc.perplexity.protocol import score

__all__ = ["expert_routers", "router_share", "score_experts_point"]


def expert_routers(model: nn.Module, router: str, sets: list[ExpertSet], reps, learned=None) -> list:
    """One router per layer: ``analytic`` (from ``reps``: (E,) representative neurons per layer),
    ``oracle``, or ``learned`` (the given predictors)."""
    if router == "learned":
        if learned is None or len(learned) != len(sets):
            raise ValueError(f"the learned router needs one predictor per layer ({len(sets)})")
        return list(learned)
    weights = ffn_weights(model)
    if len(weights) != len(sets):
        raise ValueError(f"the model has {len(weights)} layers, the experts file {len(sets)}")
    if router == "analytic":
        if reps is None:
            raise ValueError("the analytic router needs the representative neurons of the experts file")
        return [AnalyticRouter.from_weights(g, u, torch.as_tensor(r), act) for (g, u, act), r in zip(weights, reps)]
    return [OracleRouter(g, u, es, act) for (g, u, act), es in zip(weights, sets)]


def router_share(router: str, routers: list, d_model: int, d_ff: int) -> float:
    """The router's FLOPs per token over a gated FFN's (``6 d_model d_ff``); 0 for the oracle (an upper bound)."""
    if router == "oracle":
        return 0.0
    return float(routers[0].flops_per_token()) / (6.0 * d_model * d_ff)


def score_experts_point(model: nn.Module, windows: torch.Tensor, line: str, share: float, *, bos: bool,
                        projection: str, thresholds: dict, sets: list[ExpertSet], reps=None, learned=None,
                        seed: int = 0, batch_sizes=(), generation=None, **scoring) -> dict:
    """Perplexity of ``windows: (n, seq_len)`` under experts line ``line`` placed near compute share ``share``.

    Returns :func:`score`'s dict (with ``detail``) plus the frontier point's fields (``line, family,
    mode, share, kept_share, product_shares, ffn_flops_share, predictor_flops_share, compute_share``)
    and the experts' ``router, k, n_experts, n_shared, expert_size``.  ``scoring`` passes through to
    :func:`score` (the interval's block, the dense reference of the KL); ``generation``
    (:class:`apc.perplexity.frontier.GenerationInputs`) adds the point's generation agreement.
    """
    d = parse_expert_line(line)
    if d is None:
        raise ValueError(f"not a neuron-experts line: {line!r}")
    es0 = sets[0]
    routers = expert_routers(model, d["router"], sets, reps, learned)
    d_model = routers[0].d_model
    rshare = router_share(d["router"], routers, d_model, es0.width)
    k = choose_k(len(es0.shared), es0.size, es0.n_experts, es0.width, rshare, share)
    cents = torch.stack([expert_masks(es) for es in sets])
    masks = Masks("predicted", projections=(projection,), thresholds=thresholds, seed=seed,
                  centroids={projection: cents}, predictors={projection: routers}, top_m=k)
    res = score(model, windows, masks, bos=bos, detail=True, batch_sizes=tuple(batch_sizes), **scoring)
    for per_b in (res.get("batch") or {}).values():
        for cell in per_b.values():
            cell["grouped"] = dict(cell["union"])  # contiguous expert blocks: the union is the grouped read
    n_layers = len(sets)
    shares = product_shares("before", res["layer_kept"], n_layers)
    flops = ffn_share(shares, product_weights(model))
    if generation is not None:
        from apc.perplexity.frontier import point_generation

        res["generation"] = point_generation(model, masks, generation)
    return {**res, "line": line, "family": "experts", "mode": "predicted", "share": float(share),
            "kept_share": float(res["kept"][projection]), "product_shares": shares, "ffn_flops_share": flops,
            "predictor_flops_share": rshare, "compute_share": flops + rshare, "router": d["router"], "k": k,
            "n_experts": es0.n_experts, "n_shared": len(es0.shared), "expert_size": es0.size}
