from apc.clustering import save_centroids
from apc.clustering.cell import fit_cell
from apc.common.atomic import read_json, read_npy
from apc.common.layout import density_label
from apc.rulekit import start
from apc.common.device import cuda_peak_memory, resolve_device

log = start(snakemake, "cluster")
wc, cfg = snakemake.wildcards, snakemake.params.cluster
norms_path = getattr(snakemake.input, "norms", None)
norms = read_npy(norms_path) if norms_path else None
layer_density = None
if "allocation" in snakemake.input.keys():  # per-layer densities allocated greedily at this mean density
    table = read_json(snakemake.input.allocation)["cluster"][wc.proj]
    if density_label(wc.density) not in table:
        raise ValueError(f"{snakemake.input.allocation}: no {wc.proj} allocation at mean density {wc.density}")
    layer_density = table[density_label(wc.density)]["densities"]
    log.info("per-layer densities allocated greedily: %s", [round(d, 3) for d in layer_density])
centroids, meta = fit_cell(snakemake.input.patterns, wc.proj, wc.scope, wc.method, int(wc.k), int(wc.seed),
                           density=float(wc.density), device=snakemake.params.device, column_norms=norms,
                           layer_density=layer_density, **cfg)
save_centroids(snakemake.output.centroids, centroids,
               {**meta, **cuda_peak_memory(resolve_device(snakemake.params.device))})
