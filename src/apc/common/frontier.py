"""The compute-quality frontier's cells of a config: its projection sets, clustering cells and predictors.

A *point* is one perplexity of a projection set ``pset`` at a kept share ``rho`` under one *line* (a method of
choosing the mask, :mod:`apc.lines`; the planning of lines, points and their files is
:mod:`apc.lines.plan`).  The cluster lines read clustering cells: each frontier cell at every kept share,
with the static cell of each scope, joins the sweep (:func:`frontier_cells`), so it is clustered, evaluated,
summarised and tracked like any cell.  A frontier cell with ``allocation: layer-greedy`` clusters the variant
``{method}_layer_greedy`` (:func:`greedy_method`), whose per-layer densities are allocated greedily on train at
mean density rho.  The study's dense and true-sparse perplexities are the reference lines.
"""

from __future__ import annotations

from dataclasses import dataclass

from apc.common.layout import Cell, density_label

__all__ = ["Point", "STATIC", "cell_specs", "frontier_cells", "frontier_psets", "greedy_cells", "greedy_method",
           "neuron_matches", "predictor_cells", "reference_tokens"]

#: the clustering method of one mask for every token (K = 1): the static line of each scope, no predictor
STATIC = "static"


def neuron_matches(config: dict) -> list[str]:
    """``{kind}-k{K}-x{factor}`` names of the neuron predictors (one per kind, K and rank factor)."""
    f, p = config["frontier"], config["predict"]
    ks = sorted({int(c["k"]) for c in f["cells"] if c["method"] != STATIC})
    factors = (1, int(p["neuron_larger"])) if p["neuron_larger"] else (1,)
    return [f"{kind}-k{k}-x{x}" for kind in p["kinds"] for k in ks for x in factors]


def frontier_psets(config: dict) -> dict[str, list[str]]:
    """``frontier.pset``: ``{name: [projections]}`` (``{}`` turns the frontier off)."""
    return dict((config.get("frontier") or {}).get("pset") or {})


def reference_tokens(config: dict) -> int | None:
    """Test tokens the dense job scores and keeps as the KL's reference: the larger budget of the perplexity
    cells and the frontier (None, the whole split, when either is)."""
    budgets = [config["perplexity"]["test_tokens"], config["frontier"]["test_tokens"] if frontier_psets(config) else 0]
    return None if None in budgets else max(budgets)


def _seed(config: dict) -> int:
    return int(config["predict"]["seed"])


GREEDY_SUFFIX = "_layer_greedy"


def greedy_method(method: str) -> str:
    """The cluster-method variant of ``method`` whose per-layer densities are allocated greedily across layers."""
    return f"{method}{GREEDY_SUFFIX}"


def cell_specs(config: dict) -> list[tuple[str, str, int]]:
    """``(scope, method, k)`` of every frontier cell line, with the static cell of each scope."""
    specs = []
    for c in config["frontier"]["cells"]:
        method = greedy_method(c["method"]) if c.get("allocation", "uniform") == "layer-greedy" else c["method"]
        specs.append((c["scope"], method, int(c["k"])))
    for scope in sorted({s for s, _, _ in specs}):
        specs.append((scope, STATIC, 1))
    return list(dict.fromkeys(specs))


def frontier_cells(config: dict) -> list[Cell]:
    """Clustering cells the frontier needs: each line cell at every kept share, per projection."""
    out = []
    for projs in frontier_psets(config).values():
        for proj in projs:
            for scope, method, k in cell_specs(config):
                for rho in config["frontier"]["kept_shares"]:
                    out.append(Cell(proj, scope, method, k, float(rho), _seed(config)))
    return list(dict.fromkeys(out))


def predictor_cells(config: dict) -> list[tuple[Cell, str]]:
    """``(cell, kind)`` of every cluster predictor to fit (no predictor for the static mask)."""
    return [(c, kind) for c in frontier_cells(config) if c.method != STATIC for kind in config["predict"]["kinds"]]


@dataclass(frozen=True)
class Point:
    """One frontier point: ``pset`` masked by ``line`` at kept share ``share``."""

    pset: str
    line: str
    share: float

    @property
    def key(self) -> str:
        """``down_in/predicted-linear-m1.per_layer.apc-k128-s0/0.6``: the point's MLflow name."""
        return f"frontier/{self.pset}/{self.line}/{density_label(self.share)}"


def greedy_cells(config: dict) -> list[Cell]:
    """The frontier cells whose per-layer densities are allocated greedily."""
    return [c for c in frontier_cells(config) if c.method.endswith(GREEDY_SUFFIX)]