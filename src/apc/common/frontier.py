"""The compute-quality frontier of a config: its clustering cells, predictors and points.

A *point* is one perplexity of a projection set ``pset`` at a kept share ``rho`` under one
*line* (a method of choosing the mask).  The line is a file-name-safe string:

=====================================  ===================================================
line                                   mask (perplexity mode)
=====================================  ===================================================
``threshold-self``                     ``|x| >= T_rho`` on the masked tensor itself, calibrated on
                                       train (``threshold``): needs the products before it
``cats``                               ``|act(gate)| >= T`` (CATS, ``cats``); its kept shares put
                                       its compute share (1 + 2 rho) / 3 on the frontier's shares
``teal``, ``teal-block``,              the MLP input and ``down_in`` thresholded (TEAL, ``teal``):
``teal-layer-greedy``                  one share for both in every layer; TEAL's block-wise
                                       split (``block``: in every layer the input and ``down_in``
                                       shares chosen greedily on train at the same compute); or
                                       per-layer shares allocated greedily across layers on
                                       train at the same mean (``layer-greedy``, not TEAL's)
``wina``                               TEAL's two thresholds on ``|x_j| * ||W[:, j]||`` (WINA)
``larosa``                             top-k of the PCA-rotated MLP input and of ``down_in``
                                       (LaRoSA; its rotation's FLOPs counted)
``griffin``                            per sequence, the top neurons of the dense prompt's
                                       normalised ``down_in``, kept for every later token (GRIFFIN)
``random``                             ``round(rho * width)`` uniform neurons (``random_only``)
``oracle.{scope}.{method}-k{K}-s{S}``  the cell's centroid at density rho, oracle id
                                       (``centroid_only``); ``static`` cells are the static line
``predicted-{kind}-m{m}.{scope}.…``    union of the m centroids the cluster predictor
                                       scores highest (``predicted``)
``neuron-{kind}-k{K}-x{f}``            top ``rho * width`` neurons of the low-rank neuron
                                       predictor whose FLOPs match the ``kind`` cluster
                                       predictor of K centroids, times ``f`` (``neuron_predicted``)
``experts-{router}.s{S}-e{E}``         shared set plus the k routed experts the router scores
                                       highest (``predicted``; :mod:`apc.common.neuron_experts`)
=====================================  ===================================================

Each cluster line at rho uses the clustering cell of density rho; those cells join the
sweep (:func:`frontier_cells`), so they are clustered, evaluated, summarised and tracked
like any cell.  A frontier cell with ``allocation: layer-greedy`` clusters the variant
``{method}_layer_greedy`` (:func:`greedy_method`), whose per-layer densities are allocated greedily on
train at mean density rho.  The study's dense and true-sparse perplexities are the reference lines.
"""

from __future__ import annotations

from dataclasses import dataclass

from apc.common.layout import Cell, density_label
from apc.common.maskspec import LineSpec
from apc.common.neuron_experts import expert_lines

__all__ = ["Point", "baseline_lines", "cats_share", "frontier_cells", "frontier_points", "frontier_psets",
           "greedy_cells", "greedy_method", "line_shares", "neuron_matches", "parse_line", "predictor_cells"]


def parse_line(line: str) -> dict:
    """``{"family", "mode", ...}`` of a line string; ``ValueError`` for an unknown one.

    Cluster lines add ``scope, method, k, seed``; ``predicted`` adds ``kind, top_m``;
    ``neuron`` adds ``kind, k, factor``; ``teal`` adds ``allocation``; ``experts`` adds ``router,
    shared, n``.  The typed value is
    :class:`apc.common.maskspec.LineSpec`.
    """
    return LineSpec.parse(line).fields()


def line_cell(line: str, proj: str, share: float) -> Cell | None:
    """The clustering cell a cluster line uses for ``proj`` at kept share ``share`` (None otherwise)."""
    d = parse_line(line)
    if "scope" not in d:
        return None
    return Cell(proj, d["scope"], d["method"], d["k"], float(share), d["seed"])


def neuron_matches(config: dict) -> list[str]:
    """``{kind}-k{K}-x{factor}`` names of the neuron predictors (one per kind, K and rank factor)."""
    f, p = config["frontier"], config["predict"]
    ks = sorted({int(c["k"]) for c in f["cells"] if c["method"] != "static"})
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


def cats_share(compute_share: float) -> float | None:
    """CATS's kept share rho whose compute share (1 + 2 rho) / 3 is ``compute_share`` (None below 1/3)."""
    rho = (3.0 * float(compute_share) - 1.0) / 2.0
    return round(rho, 6) if rho > 1e-9 else None


def line_shares(config: dict, line: str) -> list[float]:
    """Kept shares of one line: the frontier's, except CATS, placed at the frontier's compute shares."""
    shares = [float(s) for s in config["frontier"]["kept_shares"]]
    if parse_line(line)["family"] == "cats":
        return [r for r in map(cats_share, shares) if r is not None]
    return shares


def _cell_specs(config: dict) -> list[tuple[str, str, int]]:
    """``(scope, method, k)`` of every frontier cell line, with the static cell of each scope."""
    specs = []
    for c in config["frontier"]["cells"]:
        method = greedy_method(c["method"]) if c.get("allocation", "uniform") == "layer-greedy" else c["method"]
        specs.append((c["scope"], method, int(c["k"])))
    for scope in sorted({s for s, _, _ in specs}):
        specs.append((scope, "static", 1))
    return list(dict.fromkeys(specs))


def frontier_cells(config: dict) -> list[Cell]:
    """Clustering cells the frontier needs: each line cell at every kept share, per projection."""
    out = []
    for projs in frontier_psets(config).values():
        for proj in projs:
            for scope, method, k in _cell_specs(config):
                for rho in config["frontier"]["kept_shares"]:
                    out.append(Cell(proj, scope, method, k, float(rho), _seed(config)))
    return list(dict.fromkeys(out))


def predictor_cells(config: dict) -> list[tuple[Cell, str]]:
    """``(cell, kind)`` of every cluster predictor to fit (no predictor for the static mask)."""
    return [(c, kind) for c in frontier_cells(config) if c.method != "static" for kind in config["predict"]["kinds"]]


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


def baseline_lines(config: dict) -> list[str]:
    """The training-free lines of ``frontier.baselines`` (TEAL once per ``frontier.teal_allocation``)."""
    f = config["frontier"]
    out = []
    for b in f["baselines"]:
        if b == "threshold":
            out.append("threshold-self")
        elif b == "teal":
            out += ["teal" if a == "uniform" else f"teal-{a}" for a in f["teal_allocation"]]
        else:
            out.append(b)
    return out


def lines(config: dict) -> list[str]:
    """Every line of the frontier, in plot order."""
    seed, p = _seed(config), config["predict"]
    out = baseline_lines(config)
    for scope, method, k in _cell_specs(config):
        cell = f"{scope}.{method}-k{k}-s{seed}"
        out.append(f"oracle.{cell}")
        if method != "static":
            out += [f"predicted-{kind}-m{m}.{cell}" for kind in p["kinds"] for m in p["top_m"]]
    out += [f"neuron-{m}" for m in neuron_matches(config)]
    return out


def frontier_points(config: dict) -> list[Point]:
    """Every point: each pset x line x kept share."""
    return [Point(pset, line, float(rho)) for pset, projs in frontier_psets(config).items()
            for line in lines(config) + expert_lines(config, projs) for rho in line_shares(config, line)]
