"""All-layer totals of a predictor report (:func:`train_cluster_cell` / :func:`train_neuron_cell`).

Mask metrics are recomputed from the layers' summed coverage counts (not averaged rates);
the accuracy is weighted by each layer's test tokens.  The cost is per layer: one predictor
runs in every layer, so its FLOPs share of that layer's FFN is the share of the whole FFN.
"""

from __future__ import annotations

from apc.evaluation.metrics import CoverageSums, metrics_from_sums

_COST = ("params", "flops_per_token", "ffn_flops_per_token", "flops_share")


def _total(rows: list[dict]) -> dict:
    sums = sum(CoverageSums.from_dict(r) for r in rows)
    return {**metrics_from_sums(sums), **sums.as_dict()}


def summarize_report(report: dict) -> dict:
    """``{"masks": [per top_m (cluster) or density (neuron): totals], "oracle": totals (cluster only),
    "params", "flops_per_token", "ffn_flops_per_token", "flops_share", "fit_seconds", "n_layers"}``."""
    layers = report["layers"]
    if not layers:
        raise ValueError("predictor report has no layers")
    key = "top_m" if "top_m" in layers[0]["test"]["masks"][0] else "density"
    masks = []
    for i, row in enumerate(layers[0]["test"]["masks"]):
        rows = [l["test"]["masks"][i] for l in layers]
        out = {key: row[key], **_total(rows)}
        if "accuracy" in row:
            n = sum(r["n_tokens"] for r in rows)
            out["accuracy"] = sum(r["accuracy"] * r["n_tokens"] for r in rows) / n if n else float("nan")
        masks.append(out)
    out = {"masks": masks, "n_layers": len(layers), "fit_seconds": sum(l["fit_seconds"] for l in layers),
           **{k: layers[0]["test"][k] for k in _COST}}
    out["params"] = sum(l["test"]["params"] for l in layers)
    if "oracle" in layers[0]["test"]:
        out["oracle"] = _total([l["test"]["oracle"] for l in layers])
    return out
