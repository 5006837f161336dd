import torch

from apc.clustering.device import resolve_device
from apc.common.atomic import read_json, read_npy, write_json
from apc.common.rulekit import start
from apc.extraction.ffn_inputs import extract_ffn_inputs
from apc.extraction.model import cuda_peak_memory, load_model

start(snakemake, "extract_ffn_inputs")
split = snakemake.wildcards.split
device = resolve_device(snakemake.params.device)
manifest = read_json(snakemake.input.model)
model, tok = load_model(manifest, device=device)
windows = torch.from_numpy(read_npy(snakemake.input.tokens))
meta = {"model": manifest["name"], "dataset": snakemake.params.dataset}
root = snakemake.output[0].rsplit("/", 1)[0]
summary = extract_ffn_inputs(model, windows, root, split, meta, skip_first=tok.bos_token_id is not None,
                             device=device)
write_json(f"{snakemake.output[0]}/extract.json", {"rule": "extract_ffn_inputs", **meta, **summary, **cuda_peak_memory(device)})
