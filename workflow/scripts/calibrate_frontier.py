from pathlib import Path

import numpy as np
import torch

from apc.common.atomic import write_json
from apc.common.layout import density_label
from apc.rulekit import job_model, start
from apc.extraction.ffn_inputs import FfnInputReader, ffn_input_path
from apc.common.device import cuda_peak_memory
from apc.perplexity.calibrate import (cats_thresholds, error_curves, greedy_allocation, layer_mlps, share_grid,
                                      teal_thresholds)

log = start(snakemake, "calibrate_frontier")
p = snakemake.params
manifest, model, tok, device = job_model(snakemake)
mlps = layer_mlps(model)
dtype = next(model.parameters()).dtype
width = mlps[0].gate.out_features
samples = []
for l in range(len(mlps)):
    reader = FfnInputReader(ffn_input_path(Path(snakemake.input.ffn).parent, "train", l))
    n = min(int(p.calibration_tokens), len(reader))
    rows = np.sort(np.random.default_rng(int(p.seed) * 1_000_003 + l).choice(len(reader), n, replace=False))
    samples.append(torch.from_numpy(reader.rows(rows)).to(device=device, dtype=dtype))
log.info("calibrating on %d train FFN inputs per layer (%d layers, width %d)", len(samples[0]), len(mlps), width)
out = {"model": manifest["name"], "calibration_tokens": int(len(samples[0])), "n_layers": len(mlps), "width": width,
       "allocation_step": float(p.step)}
with torch.no_grad():
    if p.cats_shares:
        out["cats"] = {density_label(s): t for s, t in cats_thresholds(mlps, samples, p.cats_shares).items()}
    grid = share_grid(float(p.step))
    out["teal"] = {}
    for allocation in p.teal_allocation:
        if allocation == "greedy":
            errors = error_curves(mlps, samples, grid, "teal")
            out["teal_errors"] = {"grid": grid.tolist(), "errors": errors.tolist()}
        table = {}
        for share in map(float, p.kept_shares):
            kept = greedy_allocation(errors, grid, share, width) if allocation == "greedy" else \
                np.full(len(mlps), int(round(share * width)))
            shares = (kept / width).tolist()
            t = teal_thresholds(mlps, samples, shares)
            train = float(np.mean([(2 * a + b) / 3 for a, b in zip(t["input_kept"], t["mid_kept"])]))
            table[density_label(share)] = {"shares": shares, "kept_neurons": kept.tolist(), **t,
                                           "train_compute_share": train}
            log.info("teal %s at %g: train compute share %.4f", allocation, share, train)
        out["teal"][allocation] = table
    if p.greedy_cells:
        errors = error_curves(mlps, samples, grid, "down_in")
        out["cluster"] = {"errors": errors.tolist(), "grid": grid.tolist(), "down_in": {}}
        for share in map(float, p.kept_shares):
            kept = greedy_allocation(errors, grid, share, width)
            out["cluster"]["down_in"][density_label(share)] = {"kept_neurons": kept.tolist(),
                                                               "densities": (kept / width).tolist()}
            log.info("cluster density allocation at %g: per layer %s", share, (kept / width).round(3).tolist())
write_json(snakemake.output[0], {**out, **cuda_peak_memory(device)})
