import torch

from apc.common.atomic import read_npy, write_json
from apc.common.rulekit import job_model, start
from apc.extraction.ffn_inputs import extract_ffn_inputs
from apc.extraction.model import cuda_peak_memory

start(snakemake, "extract_ffn_inputs")
split = snakemake.wildcards.split
manifest, model, tok, device = job_model(snakemake)
windows = torch.from_numpy(read_npy(snakemake.input.tokens))
meta = {"model": manifest["name"], "dataset": snakemake.params.dataset}
root = snakemake.output[0].rsplit("/", 1)[0]
summary = extract_ffn_inputs(model, windows, root, split, meta, skip_first=tok.bos_token_id is not None,
                             device=device, max_tokens=snakemake.params.store["rows"],
                             sample_seed=snakemake.params.store["seed"])
write_json(f"{snakemake.output[0]}/extract.json", {"rule": "extract_ffn_inputs", **meta, **summary, **cuda_peak_memory(device)})
