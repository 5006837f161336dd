"""``random``: ``round(rho * width)`` neurons per token, chosen uniformly (seeded), decided before the FFN: the
floor every informed line must clear.  It runs the built-in ``random_only`` mask of
:mod:`apc.perplexity.masking`."""

from __future__ import annotations

from apc.lines.base import Line
from apc.lines.registry import register_line


@register_line
class Random(Line):
    family = "random"
    pattern = r"random"
    mode = "random_only"
    decided_by = "before"
    order = 11
    style = ("-", "x", "#000075")
    kernel = "per_token"
    decode = "per_token"

    def label(self, spec):
        return "random neurons"

    def share_arrays(self, spec, share, *, projections):
        return {"random_density": {q: share for q in projections}}
