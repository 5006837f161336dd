"""``neuron-{kind}-k{K}-x{f}``: the top ``rho * width`` neurons of a low-rank neuron predictor (Deja Vu style, from
the MLP input) whose FLOPs match the ``kind`` cluster predictor of K centroids, times ``f``; decided before the
FFN, its FLOPs counted.  It runs the built-in ``neuron_predicted`` mask; its predictors are loaded by the job
(:func:`apc.prediction.load_predictors`, a layer above the lines)."""

from __future__ import annotations

from apc.lines.base import Line
from apc.lines.registry import register_line


@register_line
class Neuron(Line):
    family = "neuron"
    pattern = r"neuron-(?P<kind>[a-z]+)-k(?P<k>\d+)-x(?P<factor>\d+)"
    mode = "neuron_predicted"
    decided_by = "before"
    training_free = False
    order = 80
    style = ("-", "P", "#7f7f7f")
    kernel = "per_token"
    decode = "per_token"

    def label(self, spec):
        return f"neuron predictor x{spec.factor} ({spec.kind} K={spec.k} FLOPs)"

    def line_names(self, settings, config, *, projections=()):
        from apc.common.frontier import neuron_matches

        return [f"neuron-{m}" for m in neuron_matches(config)]

    def workflow_inputs(self, spec, ctx, *, projections=(), shares=()):
        match, seed = spec.line.split("-", 1)[1], ctx.config["predict"]["seed"]
        return {name: path for j, _ in enumerate(shares) for q in projections for name, path in (
            (f"predictor_{q}_{j}", ctx.layout.neuron_predictor(q, match, seed)),
            (f"report_{q}_{j}", ctx.layout.neuron_predictor_report(q, match, seed)))}

    def share_arrays(self, spec, share, *, projections):
        return {"neuron_density": {q: share for q in projections}}
