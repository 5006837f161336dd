import torch

from apc.clustering import load_centroids
from apc.clustering.device import resolve_device
from apc.common.atomic import read_json, read_npy, write_json
from apc.common.rulekit import start
from apc.extraction.model import cuda_peak_memory, load_model
from apc.perplexity.protocol import score, score_cell, select_windows

log = start(snakemake, "perplexity")
p = snakemake.params
manifest = read_json(snakemake.input.model)
device = resolve_device(p.device)
model, tok = load_model(manifest, device=device)
bos = tok.bos_token_id is not None
windows = select_windows(torch.from_numpy(read_npy(snakemake.input.tokens)), p.ppl["test_tokens"])
projections = list(p.projections)
thresholds = None
if projections:
    table = read_json(snakemake.input.thresholds)["projections"]
    thresholds = {q: [r["threshold"] for r in table[q]] for q in projections}
result = {"model": manifest["name"], "dataset": p.dataset, "seq_len": int(windows.shape[1])}

if p.mode in ("dense", "sparse"):
    result.update(mode=p.mode, **score(model, windows, p.mode, bos=bos, projections=projections,
                                       thresholds=thresholds))
    if p.mode == "sparse":
        result.update(pset=snakemake.wildcards.pset, projections=projections)
else:
    wc = snakemake.wildcards
    centroids, groups, assign_weights = {}, {}, {}
    norms_path = getattr(snakemake.input, "norms", None)
    for q in projections:
        bits, meta = load_centroids(snakemake.input[q])
        if meta.get("model") not in (None, manifest["name"]):
            raise ValueError(f"{snakemake.input[q]}: centroids of model {meta.get('model')!r}, not {manifest['name']!r}")
        centroids[q] = torch.from_numpy(bits)
        groups[q] = int(meta.get("product_groups", 1))
        if meta.get("base_method") == "apc_weighted":  # oracle by least missed weight, as the cell was fitted
            output = meta["options"].get("weighting", "magnitude") == "output"
            assign_weights[q] = read_npy(norms_path) if output else None
    modes = score_cell(model, windows, p.ppl["modes"], bos=bos, projections=projections, thresholds=thresholds,
                       centroids=centroids, seed=int(wc.seed), groups=groups, assign_weights=assign_weights)
    result.update(pset=wc.pset, projections=projections, method=wc.method, k=int(wc.k), density=float(wc.density), scope=wc.scope,
                  seed=int(wc.seed), groups=groups,
                  centroid_density={q: float(c.double().mean()) * groups[q] for q, c in centroids.items()},
                  modes=modes)
result.update(cuda_peak_memory(device))
write_json(snakemake.output[0], result)
