import pandas as pd

from apc.clustering import load_centroids
from apc.common.atomic import atomic_path
from apc.common.layout import Cell
from apc.common.rulekit import start
from apc.evaluation.evaluate import evaluate_cell

log = start(snakemake, "evaluate")
wc, p = snakemake.wildcards, snakemake.params
bits, meta = load_centroids(snakemake.input.centroids)
rows = evaluate_cell(Cell(wc.proj, wc.scope, wc.method, int(wc.k), float(wc.density), int(wc.seed)), bits, meta["layers"],
                     dict(zip(p.splits, snakemake.input.patterns)), device=p.device, chunk_size=p.eval["chunk_size"])
with atomic_path(snakemake.output[0], ".csv") as tmp:
    pd.DataFrame(rows).to_csv(tmp, index=False)
