from pathlib import Path

import torch

from apc.common.atomic import write_json
from apc.common.device import cuda_peak_memory
from apc.common.layout import density_label
from apc.perplexity.calibrate import error_curves, greedy_allocation, layer_mlps, sample_train_inputs, share_grid
from apc.rulekit import job_model, start

log = start(snakemake, "calibrate_cell_allocation")
p = snakemake.params
manifest, model, tok, device = job_model(snakemake)
mlps = layer_mlps(model)
width = mlps[0].gate.out_features
samples = sample_train_inputs(Path(snakemake.input.ffn).parent, len(mlps), p.calibration_tokens, p.seed,
                              device=device, dtype=next(model.parameters()).dtype)
log.info("allocating cell densities on %d train FFN inputs per layer (%d layers, width %d)", len(samples[0]),
         len(mlps), width)
grid = share_grid(float(p.step))
with torch.no_grad():
    errors = error_curves(mlps, samples, grid, "down_in")
out = {"errors": errors.tolist(), "grid": grid.tolist(), "down_in": {}}
for share in map(float, p.kept_shares):
    kept = greedy_allocation(errors, grid, share, width)
    out["down_in"][density_label(share)] = {"kept_neurons": kept.tolist(), "densities": (kept / width).tolist()}
    log.info("cluster density allocation at %g: per layer %s", share, (kept / width).round(3).tolist())
write_json(snakemake.output[0], {"model": manifest["name"], "calibration_tokens": int(len(samples[0])),
                                 "n_layers": len(mlps), "width": width, "allocation_step": float(p.step),
                                 "cluster": out, **cuda_peak_memory(device)})
