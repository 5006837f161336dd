"""``teal``, ``teal-block``, ``teal-layer-greedy``: TEAL (arXiv 2408.14690) on the FFN: the MLP input entering
gate and up zeroed where ``|h| < T_in``, and ``down_in`` where ``|x| < T_mid``, both calibrated on train.

Allocations of the kept share: ``uniform`` (one share for both in every layer), ``block`` (TEAL's own split:
in every layer the input and ``down_in`` shares chosen greedily on train at equal block compute), and
``layer-greedy`` (per-layer shares allocated greedily across layers on train at the same mean; not TEAL's).
The mask is decided by the input: gate and up run on the kept input channels, down on the kept neurons.
"""

from __future__ import annotations

import numpy as np

from apc.lines._rules import AtLeast, calibrated, input_threshold, share_label
from apc.lines.base import Line
from apc.lines.registry import register_line

#: TEAL's allocations of its kept shares
ALLOCATIONS = ("uniform", "layer-greedy", "block")
#: old allocation names and their new ones (a config with the old name fails with the new one)
RENAMED = {"greedy": "layer-greedy"}


def train_share(t: dict) -> float:
    """The compute share ``(2 input kept + down_in kept) / 3`` the thresholds reach on the sample."""
    return float(np.mean([(2 * a + b) / 3 for a, b in zip(t["input_kept"], t["mid_kept"])]))


@register_line
class Teal(Line):
    family = "teal"
    pattern = r"teal(?:-(?P<allocation>layer-greedy|block))?"
    mode = "teal"
    decided_by = "input"
    gated = True
    calibrates = True
    order = 30
    style = ("-", "s", "#2ca02c")
    decode = "teal"
    config = {"allocation": ["uniform"]}
    config_schema = {"allocation": {"type": "array", "minItems": 1, "uniqueItems": True,
                                    "items": {"type": "string", "enum": list(ALLOCATIONS) + list(RENAMED)},
                                    "description": "uniform | block (TEAL's own split per layer) | layer-greedy "
                                                   "(across layers, on train)"}}

    def normalise(self, params):
        return {**params, "allocation": params.get("allocation") or "uniform"}

    def line_names(self, settings, config, *, projections=()):
        return ["teal" if a == "uniform" else f"teal-{a}" for a in settings.get("allocation", ["uniform"])]

    def check(self, settings, config):
        from apc.common.errors import ConfigError

        renamed = [a for a in settings.get("allocation", []) if a in RENAMED]
        if renamed:
            raise ConfigError(f"config key 'frontier.lines.teal.allocation': {renamed[0]!r} is now called "
                              f"{RENAMED[renamed[0]]!r}")

    def label(self, spec):
        what = {"uniform": "one share per layer", "block": "TEAL's block-wise split",
                "layer-greedy": "layer-greedy shares across layers"}[spec.allocation]
        return f"TEAL input and down_in thresholds ({what})"

    def calibrate(self, mlps, samples, shares, settings, *, lines=()):
        from apc.lines._calibrate import (block_allocation, error_curves, greedy_allocation, share_grid,
                                              teal_thresholds)

        (spec,) = lines
        width = mlps[0].gate.out_features
        grid = share_grid(float(settings["allocation_step"]))
        out, table = {}, {}
        if spec.allocation == "layer-greedy":
            errors = error_curves(mlps, samples, grid, "teal")
            out["errors"] = {"grid": grid.tolist(), "errors": errors.tolist()}
        if spec.allocation == "block":  # layer by layer: one greedy path (and its cache) serves every budget
            splits = [[block_allocation(mlp, h, float(s), grid, cache) for s in shares]
                      for mlp, h, cache in ((mlp, h, {}) for mlp, h in zip(mlps, samples))]
        for j, share in enumerate(map(float, shares)):
            if spec.allocation == "block":
                split = [per_layer[j] for per_layer in splits]
                ins, mid = [b["input_share"] for b in split], [b["mid_share"] for b in split]
                t = teal_thresholds(mlps, samples, ins, mid)
                table[share_label(share)] = {"shares": ins, "mid_shares": mid, "split": split, **t,
                                             "train_compute_share": train_share(t)}
            else:
                kept = greedy_allocation(errors, grid, share, width) if spec.allocation == "layer-greedy" else \
                    np.full(len(mlps), int(round(share * width)))
                t = teal_thresholds(mlps, samples, (kept / width).tolist())
                table[share_label(share)] = {"shares": (kept / width).tolist(), "kept_neurons": kept.tolist(), **t,
                                             "train_compute_share": train_share(t)}
        return {**table, **out}

    def arrays(self, spec, share, *, projections, calibration, model, windows, settings, inputs, j=0):
        t = calibrated(calibration, share, spec)
        return {"keep_thresholds": {"down_in": t["mid"]}, "input_thresholds": t["input"]}

    def prepare(self, masks, layers, width, model):
        from apc.lines._checks import check_thresholds

        n = len(layers)
        keep = check_thresholds(masks.keep_thresholds, masks.projections, n, masks.mode, "keep_thresholds")
        given = {"input": masks.input_thresholds} if masks.input_thresholds is not None else None
        inp = check_thresholds(given, ["input"], n, masks.mode, "input_thresholds")["input"]
        return {"keep": keep, "input": inp}

    def rule(self, state, layer, proj, taps, *, fused):
        return AtLeast(state["keep"][proj][layer])

    def input_mask(self, state, layer):
        return input_threshold(state["input"][layer])
