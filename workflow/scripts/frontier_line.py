import torch

from apc.clustering import load_centroids
from apc.common.atomic import read_json, read_npy, write_json
from apc.common.layout import density_label
from apc.lines import parse
from apc.rulekit import job_model, start
from apc.common.device import cuda_peak_memory
from apc.perplexity.calibrate import layer_mlps, wina_scales
from apc.perplexity.divergence import masked_scoring
from apc.perplexity.frontier import score_point
from apc.perplexity.protocol import select_windows
from apc.prediction import load_predictors

log = start(snakemake, "frontier_line")
p, wc, i = snakemake.params, snakemake.wildcards, snakemake.input
manifest, model, tok, device = job_model(snakemake)
windows = select_windows(torch.from_numpy(read_npy(i.tokens)), p.test_tokens, key="frontier.test_tokens")
projections = list(p.projections)
scoring = masked_scoring(i.reference, windows, block_tokens=p.scoring["block_tokens"], kl_top_k=p.scoring["kl_top_k"])
table = read_json(i.thresholds)["projections"]
thresholds = {q: [r["threshold"] for r in table[q]] for q in projections}
kept = read_json(i.kept)["shares"] if "kept" in i.keys() else None
calibration = read_json(i.calibration) if "calibration" in i.keys() else None
line = parse(wc.line)
neurons = {}  # a neuron predictor serves every share: load it once
dense = None  # griffin: dense on the tokens after the prompt, the same at every share
fixed = {}  # arrays of the line at every share
if line.family == "wina":
    fixed["input_scale"], fixed["mid_scale"] = wina_scales(layer_mlps(model))
elif line.family == "larosa":
    fixed["rotations"] = list(read_npy(i.rotations))
elif line.family == "griffin":
    fixed["prompt"] = int(p.griffin_prompt or windows.shape[1] // 4)
    log.info("griffin: the first %d positions of each window run dense; the later ones are scored", fixed["prompt"])


def calibrated(section: str, share: float) -> dict | list:
    """The calibration entry of this line at ``share`` (CATS thresholds, a TEAL allocation, WINA thresholds)."""
    table = calibration.get(section) or {}
    if section == "teal":
        table = table.get(line.allocation) or {}
    if density_label(share) not in table:
        raise ValueError(f"{i.calibration}: no {section} calibration at kept share {share}; rerun calibrate_frontier")
    return table[density_label(share)]


for j, (share, out) in enumerate(zip(map(float, p.shares), snakemake.output)):
    kw, links = dict(fixed), dict(p.cells[j])
    if kept is not None:
        rows = [s for s in kept if abs(s["kept_share"] - share) < 1e-9]
        if not rows:
            raise ValueError(f"{i.kept}: no thresholds for kept share {share}")
        kw["keep_thresholds"] = {q: [r["threshold"] for r in rows[0]["projections"][q]] for q in projections}
    if line.family == "cats":
        kw["gate_thresholds"] = {"down_in": calibrated("cats", share)}
    elif line.family in ("teal", "wina"):
        t = calibrated(line.family, share)
        kw.update(keep_thresholds={"down_in": t["mid"]}, input_thresholds=t["input"])
    cents = {q: i[f"centroids_{q}_{j}"] for q in projections if f"centroids_{q}_{j}" in i.keys()}
    if cents:
        loaded = {q: load_centroids(path) for q, path in cents.items()}
        kw["centroids"] = {q: torch.from_numpy(bits) for q, (bits, _) in loaded.items()}
        weighted = {q: meta for q, (_, meta) in loaded.items() if meta.get("base_method") == "apc_weighted"}
        if weighted and line.family == "oracle":  # oracle by least missed weight, as the cell was fitted
            kw["assign_weights"] = {q: read_npy(i.norms) if m["options"].get("weighting") == "output" else None
                                    for q, m in weighted.items()}
    preds = {q: i[f"predictor_{q}_{j}"] for q in projections if f"predictor_{q}_{j}" in i.keys()}
    if preds:
        kw["predictors"], kw["predictor_share"] = {}, {}
        for q, path in preds.items():
            if path not in neurons:
                neurons[path] = load_predictors(path)[0]
            kw["predictors"][q] = neurons[path]
            kw["predictor_share"][q] = read_json(i[f"report_{q}_{j}"])["total"]["flops_share"]
    log.info("frontier %s/%s at kept share %g", wc.pset, wc.line, share)
    result = score_point(model, windows, line, share, bos=tok.bos_token_id is not None, projections=projections,
                         thresholds=thresholds, seed=p.seed, batch_sizes=p.batch_sizes, dense=dense, scoring=scoring,
                         **kw)
    dense = result.get("dense")
    write_json(out, {"model": manifest["name"], "dataset": p.dataset, "pset": wc.pset, "projections": projections,
                     "seq_len": int(windows.shape[1]), "cells": {q: c for q, c in links.items() if c}, **result, **cuda_peak_memory(device)})
