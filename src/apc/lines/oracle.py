"""``oracle.{scope}.{method}-k{K}-s{S}``: each token's centroid mask at density rho, the centroid chosen from the
token's own true pattern (an oracle: an upper bound of any predicted cluster id).  A ``static`` cell (K = 1) is
one mask for every token: the static line, deployable.  It runs the built-in ``centroid_only`` mask."""

from __future__ import annotations

from apc.lines._cells import CELL, cell_names, centroid_inputs, load_centroid_arrays
from apc.lines.base import Line
from apc.lines.registry import register_line


@register_line
class Oracle(Line):
    family = "oracle"
    pattern = r"oracle\." + CELL
    mode = "centroid_only"
    decided_by = "before"
    deployable = False
    training_free = False
    order = 60
    style = ("-", "o", "#e377c2")
    #: an oracle bounds the predicted line of its cell: drawn in that family's colour (hollow, dashed)
    bounds = "predicted"
    kernel = "grouped"
    decode = "cluster"

    def is_deployable(self, spec):
        return spec.method == "static"

    def batch_scope(self, spec) -> str:
        return "static" if spec.method == "static" else "token"

    def decode_line(self, spec):
        return "static" if spec.method == "static" else self.decode

    def label(self, spec):
        if spec.method == "static":
            return f"static mask ({spec.scope})"
        return f"oracle {spec.method} K={spec.k} ({spec.scope})"

    def line_names(self, settings, config, *, projections=()):
        return [f"oracle.{cell}" for cell in cell_names(config)]

    def workflow_inputs(self, spec, ctx, *, projections=(), shares=()):
        from apc.common.methods import method_spec

        ins = centroid_inputs(spec, ctx, projections, shares)
        base, opts = method_spec(spec.method, ctx.config["cluster"]["options"])
        if base == "apc_weighted" and opts.get("weighting") == "output":  # its oracle weighs by |W_down| columns
            ins["norms"] = ctx.layout.down_norms()
        return ins

    def arrays(self, spec, share, *, projections, calibration, model, windows, settings, inputs, j=0):
        from apc.common.atomic import read_npy

        cents, meta = load_centroid_arrays(inputs, projections, j)
        out = {"centroids": cents}
        weighted = {q: m for q, m in meta.items() if m.get("base_method") == "apc_weighted"}
        if weighted:  # oracle by least missed weight, as the cell was fitted
            out["assign_weights"] = {q: read_npy(inputs["norms"]) if m["options"].get("weighting") == "output" else None
                                     for q, m in weighted.items()}
        return out
