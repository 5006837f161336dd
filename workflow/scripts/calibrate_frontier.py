from pathlib import Path

import numpy as np
import torch

from apc.common.atomic import write_json
from apc.common.layout import density_label
from apc.rulekit import job_model, start
from apc.common.device import cuda_peak_memory
from apc.perplexity.calibrate import (block_allocation, cats_thresholds, error_curves, greedy_allocation, layer_mlps,
                                      sample_train_inputs, share_grid, teal_thresholds, wina_scales)

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


def train_share(t: dict) -> float:
    """The compute share ``(2 input kept + down_in kept) / 3`` the thresholds reach on the sample."""
    return float(np.mean([(2 * a + b) / 3 for a, b in zip(t["input_kept"], t["mid_kept"])]))


with torch.no_grad():
    if p.cats_shares:
        out["cats"] = {density_label(s): t for s, t in cats_thresholds(mlps, samples, p.cats_shares).items()}
    grid = share_grid(float(p.step))
    out["teal"] = {}
    for allocation in p.teal_allocation:
        if allocation == "layer-greedy":
            errors = error_curves(mlps, samples, grid, "teal")
            out["teal_errors"] = {"grid": grid.tolist(), "errors": errors.tolist()}
        table = {}
        if allocation == "block":  # layer by layer: one greedy path (and its cache) serves every budget
            splits = [[block_allocation(mlp, h, float(s), grid, cache) for s in p.kept_shares]
                      for mlp, h, cache in ((mlp, h, {}) for mlp, h in zip(mlps, samples))]
        for j, share in enumerate(map(float, p.kept_shares)):
            if allocation == "block":
                split = [per_layer[j] for per_layer in splits]
                shares, mid = [b["input_share"] for b in split], [b["mid_share"] for b in split]
                t = teal_thresholds(mlps, samples, shares, mid)
                table[density_label(share)] = {"shares": shares, "mid_shares": mid, "split": split, **t,
                                               "train_compute_share": train_share(t)}
            else:
                kept = greedy_allocation(errors, grid, share, width) if allocation == "layer-greedy" else \
                    np.full(len(mlps), int(round(share * width)))
                shares = (kept / width).tolist()
                t = teal_thresholds(mlps, samples, shares)
                table[density_label(share)] = {"shares": shares, "kept_neurons": kept.tolist(), **t,
                                               "train_compute_share": train_share(t)}
            log.info("teal %s at %g: train compute share %.4f", allocation, share,
                     table[density_label(share)]["train_compute_share"])
        out["teal"][allocation] = table
    if p.wina:
        scales = wina_scales(mlps)
        out["wina"] = {}
        for share in map(float, p.kept_shares):
            t = teal_thresholds(mlps, samples, [share] * len(mlps), scales=scales)
            out["wina"][density_label(share)] = {**t, "train_compute_share": train_share(t)}
            log.info("wina at %g: train compute share %.4f", share, out["wina"][density_label(share)]["train_compute_share"])
    if p.greedy_cells:
        errors = error_curves(mlps, samples, grid, "down_in")
        out["cluster"] = {"errors": errors.tolist(), "grid": grid.tolist(), "down_in": {}}
        for share in map(float, p.kept_shares):
            kept = greedy_allocation(errors, grid, share, width)
            out["cluster"]["down_in"][density_label(share)] = {"kept_neurons": kept.tolist(),
                                                               "densities": (kept / width).tolist()}
            log.info("cluster density allocation at %g: per layer %s", share, (kept / width).round(3).tolist())
write_json(snakemake.output[0], {**out, **cuda_peak_memory(device)})
