import pandas as pd

from apc.clustering import load_centroids
from apc.common.atomic import atomic_path, read_npy
from apc.common.layout import Cell
from apc.rulekit import start
from apc.evaluation.evaluate import evaluate_cell

log = start(snakemake, "evaluate")
wc, p = snakemake.wildcards, snakemake.params
bits, meta = load_centroids(snakemake.input.centroids)
weighted = meta.get("base_method") == "apc_weighted"
norms_path = getattr(snakemake.input, "norms", None)
rows = evaluate_cell(Cell(wc.proj, wc.scope, wc.method, int(wc.k), float(wc.density), int(wc.seed)), bits, meta["layers"],
                     dict(zip(p.splits, snakemake.input.patterns)), groups=int(meta.get("product_groups", 1)),
                     weighting=meta["options"].get("weighting", "magnitude") if weighted else None,
                     column_norms=read_npy(norms_path) if norms_path else None,
                     device=p.device, chunk_size=p.eval["chunk_size"],
                     max_tokens={"train": p.eval.get("max_train_tokens")})
with atomic_path(snakemake.output[0], ".csv") as tmp:
    pd.DataFrame(rows).to_csv(tmp, index=False)
