import time
from pathlib import Path

import torch

from apc.common.atomic import read_json
from apc.clustering.sources import layer_files, pooled, sample_layer
from apc.clustering import cluster, save_centroids
from apc.common.rulekit import start

log = start(snakemake, "cluster")
wc, cfg = snakemake.wildcards, snakemake.params.cluster
k, seed = int(wc.k), int(wc.seed)
root = Path(snakemake.input[0]).parent
extract = read_json(Path(snakemake.input[0]) / "extract.json")
all_layers = list(range(extract["n_layers"]))
layers = all_layers if cfg["layers"] == "all" else list(cfg["layers"])
bad = [l for l in layers if l not in all_layers]
if bad:
    raise ValueError(f"config key 'cluster.layers': layers {bad} do not exist (the model has {len(all_layers)})")
options = dict(cfg["options"])
run = dict(method=wc.method, density=cfg["density"], seed=seed, max_iter=cfg["max_iter"],
           device=snakemake.params.device, chunk_size=cfg["chunk_size"], **options)

t0 = time.perf_counter()
sets, history, iterations, converged, n_train = [], [], 0, True, 0
if wc.scope == "pooled":
    layers = all_layers
    data = pooled(layer_files(root, "train", wc.proj, layers), cfg["max_patterns_per_layer"], seed)
    groups = [(0, data)]
else:
    files = layer_files(root, "train", wc.proj, layers)
    groups = [(l, sample_layer(f, cfg["max_patterns_per_layer"], seed * 1_000_003 + l)) for l, f in zip(layers, files)]
for set_id, data in groups:
    res = cluster(data, k, **run)
    sets.append(res.centroids)
    n_train += data.n
    iterations = max(iterations, res.iterations)
    converged = converged and res.converged
    history += [{"set": set_id, **h} for h in res.history]
    log.info("%s %s %s K=%d set %d: %d patterns, %d iterations, converged=%s, objective %s",
             wc.proj, wc.scope, wc.method, k, set_id, data.n, res.iterations, res.converged,
             res.history[-1]["objective"] if res.history else "-")
centroids = torch.stack(sets)
meta = {
    "rule": "cluster", "method": wc.method, "k": k, "scope": wc.scope, "projection": wc.proj, "layers": layers,
    "density": float(centroids.float().mean()), "target_density": cfg["density"], "seed": seed,
    "iterations": iterations, "converged": converged, "wall_time_s": time.perf_counter() - t0,
    "n_train_patterns": n_train, "max_patterns_per_layer": cfg["max_patterns_per_layer"],
    "model": extract["model"], "dataset": extract["dataset"], "options": options, "history": history,
}
save_centroids(snakemake.output.centroids, centroids, meta)
