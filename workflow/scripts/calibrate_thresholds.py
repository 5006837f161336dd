import torch

from apc.common.atomic import read_npy, write_json
from apc.common.families import check_projections
from apc.common.sites import model_family
from apc.extraction.extract import calibrate_thresholds
from apc.common.device import cuda_peak_memory
from apc.extraction.natural import natural_thresholds
from apc.rulekit import job_model, start

start(snakemake, "calibrate_thresholds")
ex = snakemake.params.extract
_, model, tok, device = job_model(snakemake)
check_projections(model_family(model), ex["projections"])  # a hub model's family is known only now
windows = torch.from_numpy(read_npy(snakemake.input.tokens))
kw = dict(bits=ex["histogram_bits"], skip_first=tok.bos_token_id is not None, device=device,
          histograms_path=snakemake.output.histograms)
if ex.get("threshold", "quantile") == "zero":
    result = natural_thresholds(model, windows, ex["projections"], **kw)
else:
    result = calibrate_thresholds(model, windows, ex["projections"], ex["sparsity"], **kw)
write_json(snakemake.output.thresholds, {**result, **cuda_peak_memory(device)})
