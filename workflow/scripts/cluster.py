from apc.clustering import save_centroids
from apc.clustering.cell import fit_cell
from apc.clustering.device import resolve_device
from apc.common.rulekit import start
from apc.extraction.model import cuda_peak_memory

log = start(snakemake, "cluster")
wc, cfg = snakemake.wildcards, snakemake.params.cluster
centroids, meta = fit_cell(snakemake.input[0], wc.proj, wc.scope, wc.method, int(wc.k), int(wc.seed),
                           density=float(wc.density), device=snakemake.params.device, **cfg)
save_centroids(snakemake.output.centroids, centroids,
               {**meta, **cuda_peak_memory(resolve_device(snakemake.params.device))})
