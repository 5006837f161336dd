import torch

from apc.common.atomic import read_json, read_npy, write_json
from apc.extraction.extract import extract_patterns
from apc.extraction.model import cuda_peak_memory
from apc.common.rulekit import job_model, start

start(snakemake, "extract_patterns")
split = snakemake.wildcards.split
manifest, model, tok, device = job_model(snakemake)
windows = torch.from_numpy(read_npy(snakemake.input.tokens))
meta = {"model": manifest["name"], "dataset": snakemake.params.dataset}
summary = extract_patterns(
    model, windows, read_json(snakemake.input.thresholds), snakemake.params.extract["projections"],
    snakemake.output[0].rsplit("/", 1)[0], split, meta,
    skip_first=tok.bos_token_id is not None, device=device,
    magnitudes=snakemake.params.extract.get("magnitudes", []),
    pattern_tokens=snakemake.params.store["patterns"], magnitude_tokens=snakemake.params.store["magnitudes"],
    sample_seed=snakemake.params.store["seed"],
)
write_json(f"{snakemake.output[0]}/extract.json", {"rule": "extract_patterns", **meta, **summary,
                                                      **cuda_peak_memory(device)})
