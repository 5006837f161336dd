import torch

from apc.clustering import load_centroids
from apc.common.atomic import read_json, read_npy, write_json
from apc.common.rulekit import job_model, start
from apc.extraction.model import cuda_peak_memory
from apc.perplexity.frontier import score_point
from apc.perplexity.protocol import select_windows
from apc.prediction import load_predictors

log = start(snakemake, "frontier_line")
p, wc, i = snakemake.params, snakemake.wildcards, snakemake.input
manifest, model, tok, device = job_model(snakemake)
windows = select_windows(torch.from_numpy(read_npy(i.tokens)), p.test_tokens, key="frontier.test_tokens")
projections = list(p.projections)
table = read_json(i.thresholds)["projections"]
thresholds = {q: [r["threshold"] for r in table[q]] for q in projections}
kept = read_json(i.kept)["shares"] if "kept" in i.keys() else None
neurons = {}  # a neuron predictor serves every share: load it once

for j, (share, out) in enumerate(zip(map(float, p.shares), snakemake.output)):
    kw, links = {}, dict(p.cells[j])
    if kept is not None:
        rows = [s for s in kept if abs(s["kept_share"] - share) < 1e-9]
        if not rows:
            raise ValueError(f"{i.kept}: no thresholds for kept share {share}")
        kw["keep_thresholds"] = {q: [r["threshold"] for r in rows[0]["projections"][q]] for q in projections}
    cents = {q: i[f"centroids_{q}_{j}"] for q in projections if f"centroids_{q}_{j}" in i.keys()}
    if cents:
        kw["centroids"] = {q: torch.from_numpy(load_centroids(path)[0]) for q, path in cents.items()}
    preds = {q: i[f"predictor_{q}_{j}"] for q in projections if f"predictor_{q}_{j}" in i.keys()}
    if preds:
        kw["predictors"], kw["predictor_share"] = {}, {}
        for q, path in preds.items():
            if path not in neurons:
                neurons[path] = load_predictors(path)[0]
            kw["predictors"][q] = neurons[path]
            kw["predictor_share"][q] = read_json(i[f"report_{q}_{j}"])["total"]["flops_share"]
    log.info("frontier %s/%s at kept share %g", wc.pset, wc.line, share)
    result = score_point(model, windows, wc.line, share, bos=tok.bos_token_id is not None, projections=projections,
                         thresholds=thresholds, seed=p.seed, **kw)
    write_json(out, {"model": manifest["name"], "dataset": p.dataset, "pset": wc.pset, "projections": projections,
                     "seq_len": int(windows.shape[1]), "cells": {q: c for q, c in links.items() if c}, **result, **cuda_peak_memory(device)})
