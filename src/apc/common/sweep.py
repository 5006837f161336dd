"""Expand the configured sweep into cells (one Snakemake job each)."""

from __future__ import annotations


def cluster_cells(config: dict) -> list[dict]:
    """Clustering cells ``{proj, scope, method, k, seed}``; the static mask has K = 1 only."""
    c = config["cluster"]
    cells = []
    for proj in c["projections"]:
        for scope in c["scopes"]:
            for method in c["methods"]:
                ks = [1] if method == "static" else c["k"]
                for k in ks:
                    for seed in c["seeds"]:
                        cells.append({"proj": proj, "scope": scope, "method": method, "k": int(k), "seed": int(seed)})
    return cells


def perplexity_cells(config: dict) -> list[dict]:
    """Perplexity cells ``{pset, scope, method, k, seed}`` from ``perplexity.cells`` (``all`` = every sweep cell).

    Per-layer centroids mask a model only when they cover every layer, so with
    ``cluster.layers`` a subset, ``all`` leaves per-layer cells out and an
    explicit per-layer cell is an error.
    """
    p = config["perplexity"]
    all_layers = config["cluster"]["layers"] == "all"
    if p["cells"] == "all":
        base = {(c["scope"], c["method"], c["k"], c["seed"]) for c in cluster_cells(config)
                if all_layers or c["scope"] != "per_layer"}
    else:
        seeds = config["cluster"]["seeds"]
        base = {(c["scope"], c["method"], int(c["k"]), int(c.get("seed", seeds[0]))) for c in p["cells"]}
        known = {(c["scope"], c["method"], c["k"], c["seed"]) for c in cluster_cells(config)}
        if not all_layers and any(scope == "per_layer" for scope, *_ in base):
            from apc.common.config import ConfigError

            raise ConfigError("config key 'perplexity.cells': per_layer cells need cluster.layers: all "
                              "(per-layer centroids must cover every layer to mask the model)")
        missing = sorted(base - known)
        if missing:
            from apc.common.config import ConfigError

            scope, method, k, seed = missing[0]
            raise ConfigError(
                f"config key 'perplexity.cells': ({method}, k={k}, {scope}, seed={seed}) is not a cell of the "
                "clustering sweep (cluster.methods/k/scopes/seeds)"
            )
    return [
        {"pset": pset, "scope": s, "method": m, "k": k, "seed": seed}
        for pset in p["psets"]
        for (s, m, k, seed) in sorted(base)
    ]
