"""Expand the configured sweep into cells (one Snakemake job each)."""

from __future__ import annotations

import hashlib

from apc.common.errors import ConfigError
from apc.common.frontier import frontier_cells
from apc.common.layout import Cell
from apc.common.methods import fixed_k, method_spec


def densities(config: dict) -> list[float]:
    """``cluster.density`` as a list (a number is a sweep of one)."""
    d = config["cluster"]["density"]
    return [float(x) for x in (d if isinstance(d, list) else [d])]


def _fixed_k(config: dict, method: str) -> int | None:
    return fixed_k(method_spec(method, config["cluster"]["options"])[0])


def cluster_cells(config: dict) -> list[Cell]:
    """Every clustering cell: the grid (:func:`grid_cells`), then the frontier's cells not in it
    (:func:`apc.common.frontier.frontier_cells`)."""
    grid = grid_cells(config)
    known = set(grid)
    return grid + [c for c in frontier_cells(config) if c not in known]


def grid_cells(config: dict) -> list[Cell]:
    """Every clustering cell of ``cluster.{projections, scopes, methods, k, density, seeds}``, then the
    extra cells listed in ``cluster.cells`` (each its own ``(projection, scope, method, k)``, so a method
    can run on one projection without multiplying the whole sweep).

    A method with a fixed K (the static mask: 1) runs once with it, whatever ``cluster.k`` says.
    A ``cluster.cells`` entry without ``density`` or ``seed`` means every configured density and the
    first seed.  Methods may be variants (:func:`apc.common.methods.method_spec`).
    """
    c = config["cluster"]
    cells = []
    for proj in c["projections"]:
        for scope in c["scopes"]:
            for method in c["methods"]:
                fixed = _fixed_k(config, method)
                for k in [fixed] if fixed is not None else c["k"]:
                    for density in densities(config):
                        for seed in c["seeds"]:
                            cells.append(Cell(proj, scope, method, int(k), density, int(seed)))
    for e in c.get("cells") or []:
        fixed = _fixed_k(config, e["method"])
        for density in [float(e["density"])] if "density" in e else densities(config):
            cells.append(Cell(e["projection"], e["scope"], e["method"], int(fixed or e["k"]), density,
                              int(e.get("seed", c["seeds"][0]))))
    return list(dict.fromkeys(cells))


def cell_projections(config: dict) -> list[str]:
    """Projections that have clustering cells: ``cluster.projections`` and those of ``cluster.cells``."""
    extra = [e["projection"] for e in config["cluster"].get("cells") or []]
    return list(dict.fromkeys([*config["cluster"]["projections"], *extra]))


def perplexity_cells(config: dict) -> list[tuple[str, Cell]]:
    """``(pset, cell)`` pairs from ``perplexity.cells`` (``all`` = every sweep group).

    The cell's ``proj`` is empty: a projection set is masked with the cells of the same
    ``(scope, method, k, density, seed)`` for each of its projections.  An entry of
    ``perplexity.cells`` without ``density`` or ``seed`` means every configured density
    and the first seed.  A set is paired with a group only when the group has a cell for every
    projection of the set (extra ``cluster.cells`` may cover one projection only).  Per-layer centroids mask a model
    only when they cover every layer, so with ``cluster.layers`` a subset, ``all`` leaves
    per-layer cells out and an explicit per-layer cell is an error.
    """
    p = config["perplexity"]
    all_layers = config["cluster"]["layers"] == "all"
    cells = grid_cells(config)
    known = {c.group for c in cells}
    have = {(c.group, c.proj) for c in cells}
    if p["cells"] == "all":
        groups = {g for g in known if all_layers or g[0] != "per_layer"}
    else:
        seeds = config["cluster"]["seeds"]
        groups = {(c["scope"], c["method"], int(c["k"]), d, int(c.get("seed", seeds[0])))
                  for c in p["cells"] for d in ([float(c["density"])] if "density" in c else densities(config))}
        if not all_layers and any(g[0] == "per_layer" for g in groups):
            raise ConfigError("config key 'perplexity.cells': per_layer cells need cluster.layers: all "
                              "(per-layer centroids must cover every layer to mask the model)")
        missing = sorted(groups - known)
        if missing:
            scope, method, k, density, seed = missing[0]
            raise ConfigError(
                f"config key 'perplexity.cells': ({method}, k={k}, {scope}, density={density}, seed={seed}) is not "
                "a cell of the clustering sweep (cluster.methods/k/scopes/density/seeds, cluster.cells)"
            )
    # a set is masked with a group only where the group has a cell for each of the set's projections
    return [(pset, Cell("", *g)) for pset, projs in p["psets"].items() for g in sorted(groups)
            if all((g, q) in have for q in projs)]


def perplexity_batches(config: dict) -> list[tuple[str, str, list[Cell]]]:
    """``(pset, batch id, cells)``: each set's perplexity cells in chunks of ``perplexity.batch_cells``.

    A batch is scored in one job with one model load; ``batch_cells: null`` puts every cell of
    a set in one batch, ``1`` gives one job per cell.  Cells are chunked in the order of
    :func:`perplexity_cells`; a batch's id is ``b`` + a hash of its set and cells, so a batch
    whose cells stay the same keeps its id (and its result) when other cells join the sweep.
    """
    size = config["perplexity"].get("batch_cells")
    by_set: dict[str, list[Cell]] = {}
    for pset, cell in perplexity_cells(config):
        by_set.setdefault(pset, []).append(cell)
    out = []
    for pset, cells in by_set.items():
        step = int(size) if size else len(cells)
        out += [(pset, _batch_id(pset, cells[i : i + step]), cells[i : i + step]) for i in range(0, len(cells), step)]
    return out


def _batch_id(pset: str, cells: list[Cell]) -> str:
    blob = "|".join([pset, *(f"{c.scope}/{c.name}" for c in cells)])
    return "b" + hashlib.sha256(blob.encode()).hexdigest()[:10]


def perplexity_batch_of(batches: list[tuple[str, str, list[Cell]]], pset: str, cell: Cell) -> str:
    """The id of the batch that scores ``cell`` on ``pset``, out of :func:`perplexity_batches`'s list;
    ``KeyError`` for a cell outside the sweep."""
    for p, batch, cells in batches:
        if p == pset and any(c.group == cell.group for c in cells):
            return batch
    raise KeyError(f"{pset}/{cell.scope}/{cell.name} is not a perplexity cell of this config (perplexity.cells)")
