import torch

from apc.clustering.device import resolve_device
from apc.common.atomic import read_npy, write_json
from apc.common.rulekit import start
from apc.extraction.extract import calibrate_kept_shares
from apc.extraction.model import load_model

start(snakemake, "calibrate_kept_shares")
p = snakemake.params
device = resolve_device(p.device)
model, tok = load_model(snakemake.input.model, device=device)
windows = torch.from_numpy(read_npy(snakemake.input.tokens))
write_json(snakemake.output[0], calibrate_kept_shares(
    model, windows, p.projections, p.kept_shares, bits=p.histogram_bits, skip_first=tok.bos_token_id is not None,
    device=device))
