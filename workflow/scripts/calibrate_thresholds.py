import torch

from apc.common.atomic import read_npy, write_json
from apc.extraction.extract import calibrate_thresholds
from apc.extraction.model import cuda_peak_memory
from apc.common.rulekit import job_model, start

start(snakemake, "calibrate_thresholds")
ex = snakemake.params.extract
_, model, tok, device = job_model(snakemake)
windows = torch.from_numpy(read_npy(snakemake.input.tokens))
result = calibrate_thresholds(
    model, windows, ex["projections"], ex["sparsity"], bits=ex["histogram_bits"],
    skip_first=tok.bos_token_id is not None, device=device, histograms_path=snakemake.output.histograms,
)
write_json(snakemake.output.thresholds, {**result, **cuda_peak_memory(device)})
