import contextlib

import torch

from apc.common.atomic import read_json, read_npy, write_json
from apc.extraction.extract import extract_patterns
from apc.extraction.ffn_inputs import FfnInputCapture
from apc.common.device import cuda_peak_memory
from apc.rulekit import job_model, start

start(snakemake, "extract_patterns")
split = snakemake.wildcards.split
manifest, model, tok, device = job_model(snakemake)
windows = torch.from_numpy(read_npy(snakemake.input.tokens))
meta = {"model": manifest["name"], "dataset": snakemake.params.dataset}
skip_first = tok.bos_token_id is not None
store = snakemake.params.store
ffn_dir = getattr(snakemake.output, "ffn", None)  # the FFN inputs too, in the same pass, where a frontier needs them
ffn = None if ffn_dir is None else FfnInputCapture(
    model, ffn_dir.rsplit("/", 1)[0], split, meta, windows.shape, skip_first=skip_first,
    max_tokens=store["ffn_inputs"], sample_seed=store["seed"])
with ffn or contextlib.nullcontext():
    summary = extract_patterns(
        model, windows, read_json(snakemake.input.thresholds), snakemake.params.extract["projections"],
        snakemake.output[0].rsplit("/", 1)[0], split, meta,
        skip_first=skip_first, device=device,
        magnitudes=snakemake.params.extract.get("magnitudes", []),
        pattern_tokens=store["patterns"], magnitude_tokens=store["magnitudes"], sample_seed=store["seed"],
    )
write_json(f"{snakemake.output[0]}/extract.json", {"rule": "extract_patterns", **meta, **summary,
                                                      **cuda_peak_memory(device)})
if ffn is not None:
    write_json(f"{ffn_dir}/extract.json", {"rule": "extract_patterns", **meta,
                                           **ffn.summary(summary["wall_time_s"]),
                                           **cuda_peak_memory(device)})
