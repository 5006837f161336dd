"""Score one point of the compute-quality frontier (:mod:`apc.common.frontier`).

The compute share a point spends is the kept share of its masks (mean over the masked
projections, measured on the scored tokens) plus the FLOPs share of its predictors
(summed over projections: each projection's predictor runs in every layer).
"""

from __future__ import annotations

import torch
from torch import nn

from apc.common.frontier import parse_line
from apc.perplexity.protocol import score


def score_point(model: nn.Module, windows: torch.Tensor, line: str, share: float, *, bos: bool, projections,
                thresholds: dict, keep_thresholds: dict | None = None, centroids: dict | None = None,
                predictors: dict | None = None, predictor_share: dict | None = None, seed: int = 0) -> dict:
    """Perplexity of ``windows: (n, seq_len)`` masked by ``line`` at kept share ``share``.

    ``keep_thresholds: {proj: [T per layer]}`` (threshold), ``centroids: {proj: (L, K, W) bool}``
    (oracle, predicted), ``predictors: {proj: [per layer]}`` and ``predictor_share: {proj: FLOPs
    share}`` (predicted, neuron).  Returns :func:`score`'s dict plus ``line, family, mode, share,
    kept_share, predictor_flops_share, compute_share``.
    """
    d = parse_line(line)
    mode, projections = d["mode"], list(projections)
    kw: dict = {}
    if d["family"] == "threshold":
        kw["keep_thresholds"] = keep_thresholds
    elif d["family"] == "random":
        kw["random_density"] = {q: share for q in projections}
    elif d["family"] == "oracle":
        kw["centroids"] = centroids
    elif d["family"] == "predicted":
        kw.update(centroids=centroids, predictors=predictors, top_m=d["top_m"])
    else:
        kw.update(predictors=predictors, neuron_density={q: share for q in projections})
    res = score(model, windows, mode, bos=bos, projections=projections, thresholds=thresholds, seed=seed, **kw)
    kept = sum(res["kept"][q] for q in projections) / len(projections)
    pshare = float(sum((predictor_share or {}).get(q, 0.0) for q in projections))
    return {**res, "line": line, "family": d["family"], "mode": mode, "share": float(share), "kept_share": kept,
            "predictor_flops_share": pshare, "compute_share": kept + pshare}
