import torch

from apc.clustering import load_centroids
from apc.common.atomic import read_json, read_npy, write_json
from apc.rulekit import job_model, start
from apc.common.device import cuda_peak_memory
from apc.perplexity.divergence import masked_scoring, save_reference
from apc.perplexity.protocol import score, score_cells, select_windows

log = start(snakemake, "perplexity")
p = snakemake.params
manifest, model, tok, device = job_model(snakemake)
bos = tok.bos_token_id is not None
windows = select_windows(torch.from_numpy(read_npy(snakemake.input.tokens)), p.ppl["test_tokens"])
projections = list(p.projections)
thresholds = None
if projections:
    table = read_json(snakemake.input.thresholds)["projections"]
    thresholds = {q: [r["threshold"] for r in table[q]] for q in projections}
result = {"model": manifest["name"], "dataset": p.dataset, "seq_len": int(windows.shape[1])}
if p.mode == "dense":  # the dense job keeps the reference every masked job measures its divergence against
    scoring = {"block_tokens": int(p.ppl["block_tokens"]),
               "keep_reference": (p.ppl["kl_reference"], int(p.ppl["kl_top_k"]))}
else:
    scoring = masked_scoring(snakemake.input.reference, windows, block_tokens=p.ppl["block_tokens"],
                             kl_top_k=p.ppl["kl_top_k"])

if p.mode in ("dense", "sparse"):
    result.update(mode=p.mode, **score(model, windows, p.mode, bos=bos, projections=projections,
                                       thresholds=thresholds, **scoring))
    if p.mode == "dense":
        save_reference(snakemake.output[1], result.pop("reference"), kind=p.ppl["kl_reference"],
                       seq_len=int(windows.shape[1]))
    if p.mode == "sparse":
        result.update(pset=snakemake.wildcards.pset, projections=projections)
else:  # a batch of cells, one model load; the perplexity_cell rule splits it into one file per cell
    norms_path = getattr(snakemake.input, "norms", None)
    cells, specs = [], []
    for i, cell in enumerate(p.cells):
        centroids, groups, assign_weights = {}, {}, {}
        for q in projections:
            path = snakemake.input[f"c{i}_{q}"]
            bits, meta = load_centroids(path)
            if meta.get("model") not in (None, manifest["name"]):
                raise ValueError(f"{path}: centroids of model {meta.get('model')!r}, not {manifest['name']!r}")
            centroids[q] = torch.from_numpy(bits)
            groups[q] = int(meta.get("product_groups", 1))
            if meta.get("base_method") == "apc_weighted":  # oracle by least missed weight, as the cell was fitted
                output = meta["options"].get("weighting", "magnitude") == "output"
                assign_weights[q] = read_npy(norms_path) if output else None
        cells.append(cell)
        specs.append({"centroids": centroids, "seed": int(cell["seed"]), "groups": groups, "assign_weights": assign_weights})
    log.info("scoring %d cells of %s with one model load", len(cells), snakemake.wildcards.pset)
    scored = score_cells(model, windows, p.ppl["modes"], bos=bos, projections=projections, thresholds=thresholds,
                         cells=specs, kernel=p.ppl.get("kernel", "hooks"), **scoring)
    result.update(pset=snakemake.wildcards.pset, projections=projections, cells=[
        {**result, "pset": snakemake.wildcards.pset, "projections": projections, **cell, "groups": spec["groups"],
         "centroid_density": {q: float(c.double().mean()) * spec["groups"][q] for q, c in spec["centroids"].items()},
         "modes": modes}
        for cell, spec, modes in zip(cells, specs, scored)])
result.update(cuda_peak_memory(device))
write_json(snakemake.output[0], result)
