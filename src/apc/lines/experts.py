"""``experts-{router}.s{S}-e{E}``: neuron experts (CMoE-style): an always-on shared set plus the k routed experts
the router (``analytic``, ``learned`` or ``oracle``: an upper bound) scores highest from the MLP input, k chosen
so that the compute share lies nearest the point's share.  It runs the built-in ``predicted`` mask with one
"centroid" per expert; its frontier job (``frontier_line_experts``, :mod:`apc.perplexity.experts_line`) reads an
experts file and places itself by compute rather than kept share, so it keeps a rule of its own."""

from __future__ import annotations

from apc.lines.base import Line
from apc.lines.registry import register_line


@register_line
class Experts(Line):
    family = "experts"
    pattern = r"experts-(?P<router>[a-z]+)\.s(?P<shared>[0-9.]+)-e(?P<n>\d+)"
    mode = "predicted"
    decided_by = "before"
    training_free = False
    order = 90
    style = ("-", "*", "#bcbd22")
    kernel = "grouped"
    decode = "cluster"
    own_job = True

    def line_names(self, settings, config, *, projections=()):
        from apc.common.neuron_experts import expert_cells

        e = config.get("experts") or {}
        if list(projections) != [e.get("projection")]:
            return []  # its lines sit on the projection set that is exactly the experts' projection
        return [f"experts-{r}.{c.name}" for c in expert_cells(config) for r in e.get("routers", [])]

    def workflow_inputs(self, spec, ctx, *, projections=(), shares=()):
        """The experts file and, for the learned router, its routers."""
        name, proj = f"s{spec.shared}-e{spec.n}", ctx.config["experts"]["projection"]
        ins = {"experts": ctx.layout.experts(proj, name)}
        if spec.router == "learned":
            ins["router"] = ctx.layout.experts_router(proj, name)
        return ins

    def is_deployable(self, spec):
        return spec.router != "oracle"

    def label(self, spec):
        return f"neuron experts, {spec.router} router (shared {spec.shared}, E={spec.n})"
