from pathlib import Path

import pandas as pd

from apc.common.atomic import atomic_path
from apc.clustering.sources import layer_files, sample_layer
from apc.clustering import load_centroids
from apc.evaluation.metrics import coverage_sums, metrics_from_sums
from apc.common.rulekit import start

log = start(snakemake, "evaluate")
wc, p = snakemake.wildcards, snakemake.params
bits, meta = load_centroids(snakemake.input.centroids)
layers = meta["layers"]
keys = {"projection": wc.proj, "scope": wc.scope, "method": wc.method, "k": int(wc.k), "seed": int(wc.seed)}
rows = []
for split, folder in zip(p.splits, snakemake.input.patterns):
    root = Path(folder).parent
    total = 0
    for i, (layer, path) in enumerate(zip(layers, layer_files(root, split, wc.proj, layers))):
        data = sample_layer(path, None, 0)  # every stored token of the split, streamed in chunks
        if data.width != bits.shape[-1]:
            raise ValueError(f"{path}: width {data.width} differs from the centroids' width {bits.shape[-1]}")
        sums = coverage_sums(data, bits[i if len(bits) > 1 else 0], device=p.device, chunk_size=p.eval["chunk_size"])
        total = total + sums
        rows.append({"split": split, "layer": layer, **keys, **metrics_from_sums(sums)})
    rows.append({"split": split, "layer": "all", **keys, **metrics_from_sums(total)})
    m = rows[-1]
    log.info("%s %s/%s/%s K=%s: recall %.4f precision %.4f centroid density %.4f (data density %.4f)", split,
             wc.proj, wc.scope, wc.method, wc.k, m["recall"], m["precision"], m["centroid_density"], m["data_density"])
with atomic_path(snakemake.output[0], ".csv") as tmp:
    pd.DataFrame(rows).to_csv(tmp, index=False)
