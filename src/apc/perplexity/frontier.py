"""Score one point of the compute-quality frontier (:mod:`apc.common.frontier`).

A point records, per layer, the share of each matrix product's multiply-adds that its method
really runs on the scored tokens (:mod:`apc.perplexity.accounting`), and the predictor's FLOPs
share (summed over projections: each projection's predictor runs in every layer).
``compute_share`` is their FLOP-weighted total; ``kept_share`` the mean kept share of the masks.
With ``batch_sizes`` the point also carries the batch view (:func:`apc.perplexity.masking.install_interventions`).
"""

from __future__ import annotations

import torch
from torch import nn

from apc.common.frontier import parse_line
from apc.perplexity.accounting import ffn_share, product_shares, product_weights
from apc.perplexity.protocol import score


def score_point(model: nn.Module, windows: torch.Tensor, line: str, share: float, *, bos: bool, projections,
                thresholds: dict, keep_thresholds: dict | None = None, centroids: dict | None = None,
                predictors: dict | None = None, predictor_share: dict | None = None, seed: int = 0,
                gate_thresholds: dict | None = None, input_thresholds: list | None = None,
                batch_sizes=(), assign_weights: dict | None = None, **scoring) -> dict:
    """Perplexity of ``windows: (n, seq_len)`` masked by ``line`` at kept share ``share``.

    ``keep_thresholds: {proj: [T per layer]}`` (threshold-self; teal: ``down_in``),
    ``gate_thresholds: {"down_in": [T per layer]}`` (cats), ``input_thresholds: [T_in per layer]``
    (teal), ``centroids: {proj: (L, K, W) bool}`` (oracle, predicted; ``assign_weights`` as in
    :func:`install_interventions` for a weighted cell's oracle), ``predictors: {proj: [per
    layer]}`` and ``predictor_share: {proj: FLOPs share}`` (predicted, neuron).  Returns
    :func:`score`'s dict (with ``detail``) plus ``line, family, mode, share, kept_share,
    product_shares`` (``{gate, up, down: [share per layer]}``), ``ffn_flops_share``,
    ``predictor_flops_share`` and ``compute_share``.
    """
    d = parse_line(line)
    mode, projections = d["mode"], list(projections)
    kw: dict = {}
    if d["family"] == "threshold":
        kw["keep_thresholds"] = keep_thresholds
    elif d["family"] == "cats":
        kw["gate_thresholds"] = gate_thresholds
    elif d["family"] == "teal":
        kw.update(keep_thresholds=keep_thresholds, input_thresholds=input_thresholds)
    elif d["family"] == "random":
        kw["random_density"] = {q: share for q in projections}
    elif d["family"] == "oracle":
        kw.update(centroids=centroids, assign_weights=assign_weights)
    elif d["family"] == "predicted":
        kw.update(centroids=centroids, predictors=predictors, top_m=d["top_m"])
    else:
        kw.update(predictors=predictors, neuron_density={q: share for q in projections})
    res = score(model, windows, mode, bos=bos, projections=projections, thresholds=thresholds, seed=seed,
                detail=True, batch_sizes=tuple(batch_sizes), **scoring, **kw)
    kept = sum(res["kept"][q] for q in projections) / len(projections)
    n_layers = len(next(iter(res["layer_kept"].values())))
    shares = product_shares(d["family"], res["layer_kept"], n_layers, res.get("input_kept"))
    flops = ffn_share(shares, product_weights(model))
    pshare = float(sum((predictor_share or {}).get(q, 0.0) for q in projections))
    return {**res, "line": line, "family": d["family"], "mode": mode, "share": float(share), "kept_share": kept,
            "product_shares": shares, "ffn_flops_share": flops, "predictor_flops_share": pshare,
            "compute_share": flops + pshare}
