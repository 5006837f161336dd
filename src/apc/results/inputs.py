"""The result files of the current sweep of a resolved config: what summary, plots and tracking read.

Derived from the config alone (never a folder scan), so a cell that left the sweep is not
read even while its files stay on disk, and hidden or temporary files are never picked up.
"""

from __future__ import annotations

from dataclasses import dataclass

from apc.common.frontier import Point, frontier_psets, neuron_matches, predictor_cells
from apc.common.layout import Cell, Layout
from apc.common.neuron_experts import ExpertCell, expert_cells
from apc.common.sweep import cluster_cells, perplexity_cells
from apc.lines.plan import frontier_points


@dataclass
class SweepFiles:
    """Result paths of one resolved config, by kind (lists of ``str``; ``points`` the frontier's
    :class:`~apc.common.frontier.Point` objects, ``frontier`` their files in the same order)."""

    cells: list[Cell]
    ppl_cells: list[tuple[str, Cell]]
    centroids: list[str]
    centroid_metas: list[str]
    evals: list[str]
    refs: list[str]
    ppl: list[str]
    points: list[Point]
    frontier: list[str]
    frontier_refs: list[str]
    predictor_reports: list[str]
    frontier_table: list[str]
    expert_cells: list[ExpertCell] = None
    experts_reports: list[str] = None


def _predictor_reports(config: dict, lay: Layout) -> list[str]:
    """Reports of every cluster predictor, then of every neuron predictor, of the frontier."""
    seed = config["predict"]["seed"]
    projs = sorted({q for ps in frontier_psets(config).values() for q in ps})
    return ([lay.cluster_predictor_report(c, kind) for c, kind in predictor_cells(config)]
            + [lay.neuron_predictor_report(q, m, seed) for q in projs for m in neuron_matches(config)])


def sweep_files(config: dict) -> SweepFiles:
    """Every result file the current sweep of ``config`` writes (see :class:`SweepFiles`)."""
    lay = Layout(config["outdir"])
    cells = cluster_cells(config)
    pcells = perplexity_cells(config)
    points = frontier_points(config)
    psets = frontier_psets(config)
    return SweepFiles(
        cells=cells,
        ppl_cells=pcells,
        centroids=[lay.centroids(c) for c in cells],
        centroid_metas=[lay.centroids_meta(c) for c in cells],
        evals=[lay.eval_table(c) for c in cells],
        refs=[lay.ppl_dense()] + [lay.ppl_sparse(p) for p in config["perplexity"]["psets"]],
        ppl=[lay.ppl_cell(p, c) for p, c in pcells] if config["perplexity"]["modes"] else [],
        points=points,
        frontier=[lay.frontier_point(p.pset, p.line, p.share) for p in points],
        frontier_refs=[lay.ppl_dense()] + [lay.ppl_sparse(p) for p in psets] if points else [],
        predictor_reports=_predictor_reports(config, lay) if points else [],
        frontier_table=[lay.frontier_table()] if points else [],
        expert_cells=expert_cells(config),
        experts_reports=[lay.experts_report(c.proj, c.name) for c in expert_cells(config)],
    )
