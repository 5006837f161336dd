"""``predicted-{kind}-m{m}.{scope}.{method}-k{K}-s{S}``: the union of the m centroids a cluster-id predictor
(``kind``: linear or mlp, from the MLP input) scores highest; decided before the FFN, the predictor's FLOPs
counted.  It runs the built-in ``predicted`` mask."""

from __future__ import annotations

from apc.lines._cells import CELL, cell_names, cell_of, centroid_inputs, load_centroid_arrays
from apc.lines.base import Line
from apc.lines.registry import register_line


@register_line
class Predicted(Line):
    family = "predicted"
    pattern = r"predicted-(?P<kind>[a-z]+)-m(?P<top_m>\d+)\." + CELL
    mode = "predicted"
    decided_by = "before"
    training_free = False
    order = 70
    style = ("-", "^", "#17becf")
    kernel = "grouped"
    decode = "cluster"

    def label(self, spec):
        return f"predicted {spec.kind} top-{spec.top_m} {spec.method} K={spec.k} ({spec.scope})"

    def line_names(self, settings, config, *, projections=()):
        p = config["predict"]
        return [f"predicted-{kind}-m{m}.{cell}" for cell in cell_names(config, predictable=True)
                for kind in p["kinds"] for m in p["top_m"]]

    def workflow_inputs(self, spec, ctx, *, projections=(), shares=()):
        ins = centroid_inputs(spec, ctx, projections, shares)
        for j, s in enumerate(shares):
            for q in projections:
                ins[f"predictor_{q}_{j}"] = ctx.layout.cluster_predictor(cell_of(spec, q, s), spec.kind)
                ins[f"report_{q}_{j}"] = ctx.layout.cluster_predictor_report(cell_of(spec, q, s), spec.kind)
        return ins

    def arrays(self, spec, share, *, projections, calibration, model, windows, settings, inputs, j=0):
        cents, _ = load_centroid_arrays(inputs, projections, j)
        return {"centroids": cents}  # its predictors: loaded by the job (apc.prediction.load_predictors)

    def share_arrays(self, spec, share, *, projections):
        return {"top_m": spec.top_m}
