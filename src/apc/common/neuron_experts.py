"""The neuron-experts cells and frontier lines of a config (``experts`` section).

A cell ``(proj, shared, n)`` splits each layer's neurons of ``proj`` into a shared set of about
``shared * width`` of the most frequent neurons and ``n`` equal-size routed experts
(:mod:`apc.clustering.experts`).  Each cell and router of ``experts.routers`` is one frontier line
``experts-{router}.s{shared}-e{n}``: at each kept share rho of the frontier, the token keeps the shared
set plus the ``k`` experts its router scores highest, ``k`` chosen in the line's job so that the
compute share (kept neurons plus the router's FLOPs) lies nearest rho (:func:`choose_k`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ExpertCell", "ROUTERS", "choose_k", "expert_cells", "parse_expert_line"]

ROUTERS = ("analytic", "learned", "oracle")
_LINE_RE = re.compile(r"experts-(?P<router>[a-z]+)\.s(?P<shared>[0-9.]+)-e(?P<n>\d+)")


@dataclass(frozen=True, order=True)
class ExpertCell:
    """One neuron-experts cell: projection, requested shared share, routed experts."""

    proj: str
    shared: float
    n: int

    @property
    def name(self) -> str:
        return f"s{self.shared:g}-e{self.n}"

    @property
    def key(self) -> str:
        """``experts/down_in/s0.1-e16``: the cell's MLflow name."""
        return f"experts/{self.proj}/{self.name}"


def _section(config: dict) -> dict:
    return config.get("experts") or {}


def expert_cells(config: dict) -> list[ExpertCell]:
    """Every cell of ``experts.cells`` (empty without the section)."""
    e = _section(config)
    return list(dict.fromkeys(ExpertCell(e["projection"], float(c["shared"]), int(c["n"])) for c in e.get("cells", [])))


def parse_expert_line(line: str) -> dict | None:
    """``{"router", "shared", "n"}`` of an experts line, None for another line; an unknown router is an error."""
    m = _LINE_RE.fullmatch(line)
    if m is None:
        return None
    if m["router"] not in ROUTERS:
        raise ValueError(f"unknown experts router {m['router']!r} in line {line!r}; expected one of {', '.join(ROUTERS)}")
    return {"router": m["router"], "shared": float(m["shared"]), "n": int(m["n"])}


def choose_k(n_shared: int, size: int, n: int, width: int, router_share: float, target: float) -> int:
    """Experts per token ``k`` in ``[1, n]`` whose compute share ``(n_shared + k size) / width + router_share``
    lies nearest ``target`` (ties -> fewer experts)."""
    return min(range(1, n + 1), key=lambda k: (abs((n_shared + k * size) / width + router_share - target), k))
