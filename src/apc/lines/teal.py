"""``teal``, ``teal-block``, ``teal-layer-greedy``: TEAL (arXiv 2408.14690) on the FFN: the MLP input entering
gate and up zeroed where ``|h| < T_in``, and ``down_in`` where ``|x| < T_mid``, both calibrated on train.

Allocations of the kept share: ``uniform`` (one share for both in every layer), ``block`` (TEAL's own split:
in every layer the input and ``down_in`` shares chosen greedily on train at equal block compute), and
``layer-greedy`` (per-layer shares allocated greedily across layers on train at the same mean; not TEAL's).
The mask is decided by the input: gate and up run on the kept input channels, down on the kept neurons.

``teal-model`` (``compute_scope: [model]``): TEAL as published, all seven projections of every block sparse.
Besides the FFN's two inputs, the attention input that q_proj, k_proj and v_proj share (one threshold over the
stacked qkv weight) and the input of o_proj are zeroed below their thresholds, with one kept share for every
input (uniform, as TEAL's own inference path uses), calibrated on the attention inputs of train tokens.  Its
compute share is over every linear layer of the blocks, so that it reads beside TEAL's paper, and its points
sit at TEAL's whole-model sparsities 0.25, 0.4 and 0.5 (kept shares :data:`MODEL_SHARES`).
"""

from __future__ import annotations

import numpy as np

from apc.lines._rules import AtLeast, calibrated, input_threshold, share_label
from apc.lines.base import Line
from apc.lines.registry import register_line

#: TEAL's allocations of its kept shares
ALLOCATIONS = ("uniform", "layer-greedy", "block")
#: kept shares of the model-scope line: TEAL's whole-model sparsities 0.25, 0.4 and 0.5
MODEL_SHARES = (0.75, 0.6, 0.5)
#: the layers the compute share covers: the FFN's products, or every linear layer of the blocks
COMPUTE_SCOPES = ("ffn", "model")
#: old allocation names and their new ones (a config with the old name fails with the new one)
RENAMED = {"greedy": "layer-greedy"}


def train_share(t: dict) -> float:
    """The compute share ``(2 input kept + down_in kept) / 3`` the thresholds reach on the sample."""
    return float(np.mean([(2 * a + b) / 3 for a, b in zip(t["input_kept"], t["mid_kept"])]))


@register_line
class Teal(Line):
    family = "teal"
    pattern = r"teal(?:-(?P<allocation>layer-greedy|block))?(?P<model>-model)?"
    mode = "teal"
    decided_by = "input"
    gated = True
    calibrates = True
    order = 30
    style = ("-", "s", "#2ca02c")
    decode = "teal"
    config = {"allocation": ["uniform"], "compute_scope": ["ffn"]}
    naming_keys = ("allocation", "compute_scope")  # they choose the lines; each spec carries its own
    config_schema = {"allocation": {"type": "array", "minItems": 1, "uniqueItems": True,
                                    "items": {"type": "string", "enum": list(ALLOCATIONS) + list(RENAMED)},
                                    "description": "uniform | block (TEAL's own split per layer) | layer-greedy "
                                                   "(across layers, on train)"},
                     "compute_scope": {"type": "array", "minItems": 1, "uniqueItems": True,
                                       "items": {"type": "string", "enum": list(COMPUTE_SCOPES)},
                                       "description": "ffn (the FFN's inputs, one line per allocation) | model "
                                                      "(teal-model: TEAL as published, the attention inputs too, "
                                                      "compute over every linear layer, uniform shares)"}}

    def normalise(self, params):
        return {**params, "allocation": params.get("allocation") or "uniform", "model": bool(params.get("model"))}

    def line_names(self, settings, config, *, projections=()):
        scopes = settings.get("compute_scope", ["ffn"])
        ffn = ["teal" if a == "uniform" else f"teal-{a}" for a in settings.get("allocation", ["uniform"])]
        return (ffn if "ffn" in scopes else []) + (["teal-model"] if "model" in scopes else [])

    def shares(self, spec, kept_shares):
        return list(MODEL_SHARES) if spec.model else [float(s) for s in kept_shares]

    def compute_scope(self, spec):
        return "model" if spec.model else "ffn"

    def calibration_needs(self, spec):
        return ("attention",) if spec.model else ()

    def decode_line(self, spec):
        return "teal_model" if spec.model else self.decode

    def check(self, settings, config):
        from apc.common.errors import ConfigError

        renamed = [a for a in settings.get("allocation", []) if a in RENAMED]
        if renamed:
            raise ConfigError(f"config key 'frontier.lines.teal.allocation': {renamed[0]!r} is now called "
                              f"{RENAMED[renamed[0]]!r}")

    def label(self, spec):
        if spec.model:
            return "TEAL as published (q/k/v, o, gate/up and down inputs; compute over every linear layer)"
        what = {"uniform": "one share per layer", "block": "TEAL's block-wise split",
                "layer-greedy": "layer-greedy shares across layers"}[spec.allocation]
        return f"TEAL input and down_in thresholds ({what})"

    def calibrate(self, mlps, samples, shares, settings, *, lines=(), attention=None):
        from apc.lines._calibrate import (block_allocation, error_curves, greedy_allocation, share_grid,
                                              teal_thresholds)

        (spec,) = lines
        if spec.model:
            return _model_calibration(mlps, samples, shares, attention)
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
        out = {"keep_thresholds": {"down_in": t["mid"]}, "input_thresholds": t["input"]}
        if spec.model:
            out["attention_thresholds"] = {"qkv": t["qkv"], "o": t["o"]}
        return out

    def prepare(self, masks, layers, width, model):
        from apc.lines._checks import check_thresholds

        n = len(layers)
        keep = check_thresholds(masks.keep_thresholds, masks.projections, n, masks.mode, "keep_thresholds")
        given = {"input": masks.input_thresholds} if masks.input_thresholds is not None else None
        inp = check_thresholds(given, ["input"], n, masks.mode, "input_thresholds")["input"]
        state = {"keep": keep, "input": inp}
        attn = (masks.arrays or {}).get("attention_thresholds")
        if attn is not None:
            state["attn"] = check_thresholds(attn, ["qkv", "o"], n, masks.mode, "attention_thresholds")
        return state

    def rule(self, state, layer, proj, taps, *, fused):
        return AtLeast(state["keep"][proj][layer])

    def input_mask(self, state, layer):
        return input_threshold(state["input"][layer])

    def attention_masks(self, state, layer):
        if "attn" not in state:
            return None
        return input_threshold(state["attn"]["qkv"][layer]), input_threshold(state["attn"]["o"][layer])


def _model_calibration(mlps, samples, shares, attention) -> dict:
    """``teal-model`` per share label: TEAL's uniform FFN thresholds (``input``, ``mid``, their kept shares; those
    of ``teal`` at the same share) and
    the attention inputs' ``qkv`` and ``o`` thresholds per layer at the same kept share, from ``attention``: per
    layer ``(qkv input (n, d_model), o input (n, d_q))`` of train tokens."""
    from apc.lines._calibrate import share_threshold, teal_thresholds

    if attention is None or len(attention) != len(mlps):
        raise ValueError(f"teal-model calibrates on the attention inputs of every layer ({len(mlps)}); "
                         f"got {0 if attention is None else len(attention)}")
    table, width = {}, mlps[0].gate.out_features
    for share in map(float, shares):
        t = teal_thresholds(mlps, samples, [round(share * width) / width] * len(mlps))  # as the ffn-scope line's
        for k, i in (("qkv", 0), ("o", 1)):
            t[k] = [share_threshold(a[i], share) for a in attention]
            t[f"{k}_kept"] = [float((a[i].abs() >= v).float().mean()) for a, v in zip(attention, t[k])]
        table[share_label(share)] = {**t, "train_compute_share": train_share(t)}
    return table
