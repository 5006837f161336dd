import torch

from apc.common.atomic import read_npy, write_json
from apc.extraction.extract import calibrate_thresholds
from apc.clustering.device import resolve_device
from apc.extraction.model import cuda_peak_memory, load_model
from apc.common.rulekit import start

start(snakemake, "calibrate_thresholds")
ex = snakemake.params.extract
device = resolve_device(snakemake.params.device)
model, tok = load_model(snakemake.input.model, device=device)
windows = torch.from_numpy(read_npy(snakemake.input.tokens))
result = calibrate_thresholds(
    model, windows, ex["projections"], ex["sparsity"], bits=ex["histogram_bits"],
    skip_first=tok.bos_token_id is not None, device=device, histograms_path=snakemake.output.histograms,
)
write_json(snakemake.output.thresholds, {**result, **cuda_peak_memory(device)})
