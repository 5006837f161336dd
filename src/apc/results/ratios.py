"""Perplexity of cells as a ratio to true sparse on the same windows, and the best cell per method.

``python -m apc.results.ratios OUTDIR PSET [MODE]`` prints, for every perplexity cell of the
run's current sweep (``OUTDIR/config.json``), the PPL of ``MODE`` (default ``centroid_only``),
its kept share, and its ratio to ``ppl/sparse-PSET.json`` paired on tokens with a 95 %
block-bootstrap interval (:func:`apc.perplexity.intervals.ppl_ratio`; "n/a" below 20 blocks), then the best cell of
each method at a kept share of at most 0.6 (the goal of a ratio of at most 1.10).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from apc.common.atomic import read_json
from apc.common.layout import Layout
from apc.perplexity.intervals import BLOCK_TOKENS, ppl_ratio
from apc.results.inputs import sweep_files

__all__ = ["ratios_to_sparse", "best_per_method"]


def ratios_to_sparse(config: dict, pset: str, mode: str = "centroid_only") -> pd.DataFrame:
    """One row per perplexity cell of ``pset``: ``method, k, groups, id_bits, density, kept, ppl,
    ratio_sparse, ratio_sparse_lo, ratio_sparse_hi`` (cells without a result file are left out)."""
    import math

    lay = Layout(config["outdir"])
    sparse = read_json(lay.ppl_sparse(pset))
    rows = []
    for (p, cell), path in zip(sweep_files(config).ppl_cells, sweep_files(config).ppl):
        if p != pset or not Path(path).exists():
            continue
        d = read_json(path)
        m = d["modes"][mode]
        r, lo, hi = ppl_ratio(m["token_nll"], sparse["token_nll"], block=int(m.get("block_tokens", BLOCK_TOKENS)))
        groups = max((d.get("groups") or {}).values(), default=1)
        rows.append({"method": cell.method, "scope": cell.scope, "k": int(cell.k), "groups": groups,
                     "id_bits": groups * math.log2(int(cell.k)), "density": float(cell.density),
                     "kept": sum(m["kept"].values()) / len(m["kept"]), "ppl": m["ppl"],
                     "ratio_sparse": r, "ratio_sparse_lo": lo, "ratio_sparse_hi": hi})
    return pd.DataFrame(rows).sort_values(["method", "k", "density"]).reset_index(drop=True)


def best_per_method(table: pd.DataFrame, max_share: float = 0.6) -> pd.DataFrame:
    """The lowest-PPL row of each method among those keeping at most ``max_share`` (+0.5 % slack)."""
    ok = table[table["kept"] <= max_share + 0.005]
    return ok.loc[ok.groupby("method")["ppl"].idxmin()].reset_index(drop=True)


def main(argv: list[str]) -> None:
    outdir, pset, mode = argv[0], argv[1], (argv[2] if len(argv) > 2 else "centroid_only")
    config = {**read_json(Layout(outdir).config()), "outdir": outdir}  # the folder given, wherever it was written
    sparse = read_json(Layout(outdir).ppl_sparse(pset))
    table = ratios_to_sparse(config, pset, mode)
    print(f"true sparse {pset}: PPL {sparse['ppl']:.3f} over {sparse['tokens']} tokens, kept {sparse['kept']}")
    print(_markdown(table))
    print("\nbest at kept share <= 0.6:")
    print(_markdown(best_per_method(table)))


def _markdown(table: pd.DataFrame) -> str:
    """The table in Markdown, a missing figure (no interval) printed "n/a"."""
    return table.astype(object).where(table.notna(), None).to_markdown(index=False, floatfmt=".3f", missingval="n/a")


if __name__ == "__main__":
    main(sys.argv[1:])
