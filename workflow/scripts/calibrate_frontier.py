from pathlib import Path

import torch

from apc.common.atomic import write_json
from apc.common.layout import density_label
from apc.rulekit import job_model, start
from apc.common.device import cuda_peak_memory
from apc.lines import parse
from apc.perplexity.calibrate import error_curves, greedy_allocation, layer_mlps, sample_train_inputs, share_grid

log = start(snakemake, "calibrate_frontier")
p = snakemake.params
manifest, model, tok, device = job_model(snakemake)
mlps = layer_mlps(model)
dtype = next(model.parameters()).dtype
width = mlps[0].gate.out_features
samples = sample_train_inputs(Path(snakemake.input.ffn).parent, len(mlps), p.calibration_tokens, p.seed,
                              device=device, dtype=dtype)
log.info("calibrating on %d train FFN inputs per layer (%d layers, width %d)", len(samples[0]), len(mlps), width)
out = {"model": manifest["name"], "calibration_tokens": int(len(samples[0])), "n_layers": len(mlps), "width": width,
       "allocation_step": float(p.step)}


settings = {"allocation_step": float(p.step)}
with torch.no_grad():
    if p.cats_shares:  # the training-free lines' calibrations (apc.lines), one section each
        out["cats"] = parse("cats").impl.calibrate(mlps, samples, p.cats_shares, settings)
    grid = share_grid(float(p.step))
    out["teal"] = {}
    for allocation in p.teal_allocation:
        spec = parse("teal" if allocation == "uniform" else f"teal-{allocation}")
        table = spec.impl.calibrate(mlps, samples, p.kept_shares, settings, lines=[spec])
        if "errors" in table:
            out["teal_errors"] = table.pop("errors")
        for label, t in table.items():
            log.info("%s at %s: train compute share %.4f", spec.line, label, t["train_compute_share"])
        out["teal"][allocation] = table
    if p.wina:
        out["wina"] = parse("wina").impl.calibrate(mlps, samples, p.kept_shares, settings)
    if p.greedy_cells:
        errors = error_curves(mlps, samples, grid, "down_in")
        out["cluster"] = {"errors": errors.tolist(), "grid": grid.tolist(), "down_in": {}}
        for share in map(float, p.kept_shares):
            kept = greedy_allocation(errors, grid, share, width)
            out["cluster"]["down_in"][density_label(share)] = {"kept_neurons": kept.tolist(),
                                                               "densities": (kept / width).tolist()}
            log.info("cluster density allocation at %g: per layer %s", share, (kept / width).round(3).tolist())
write_json(snakemake.output[0], {**out, **cuda_peak_memory(device)})
