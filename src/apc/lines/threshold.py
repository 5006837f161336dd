"""``threshold-self``: ``|x| >= T_rho`` on the masked tensor itself, with T_rho calibrated on train for a kept
share rho (other quantiles of the threshold pass's histograms).  The mask needs the products before the
masked tensor: on ``down_in``, gate and up run in full and only down is skipped."""

from __future__ import annotations

from apc.lines._rules import AtLeast
from apc.lines.base import Line
from apc.lines.registry import register_line


@register_line
class Threshold(Line):
    family = "threshold"
    pattern = r"threshold-self"
    mode = "threshold"
    decided_by = "down_in"
    order = 10
    style = ("-", "v", "#1f77b4")

    def line_names(self, settings, config, *, projections=()):
        return ["threshold-self"]

    def label(self, spec):
        return "threshold on down_in itself (gate, up in full)"

    def workflow_inputs(self, spec, ctx, *, projections=(), shares=()):
        return {"kept": ctx.layout.thresholds_kept()}

    def arrays(self, spec, share, *, projections, calibration, model, windows, settings, inputs, j=0):
        from apc.common.atomic import read_json

        rows = [s for s in read_json(inputs["kept"])["shares"] if abs(s["kept_share"] - share) < 1e-9]
        if not rows:
            raise ValueError(f"{inputs['kept']}: no thresholds for kept share {share}")
        return {"keep_thresholds": {q: [r["threshold"] for r in rows[0]["projections"][q]] for q in projections}}

    def prepare(self, masks, layers, width, model):
        from apc.lines._checks import check_thresholds

        return check_thresholds(masks.keep_thresholds, masks.projections, len(layers), masks.mode, "keep_thresholds")

    def rule(self, state, layer, proj, taps, *, fused):
        return AtLeast(state[proj][layer])
