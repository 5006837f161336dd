import torch

from apc.clustering import load_centroids
from apc.clustering.device import resolve_device
from apc.common.atomic import read_json, read_npy, write_json
from apc.common.rulekit import start
from apc.extraction.model import load_model
from apc.perplexity.frontier import score_point
from apc.perplexity.protocol import select_windows
from apc.prediction import load_predictors

log = start(snakemake, "frontier_point")
p, wc, i = snakemake.params, snakemake.wildcards, snakemake.input
share = float(wc.share)
manifest = read_json(i.model)
model, tok = load_model(manifest, device=resolve_device(p.device))
windows = select_windows(torch.from_numpy(read_npy(i.tokens)), p.test_tokens, key="frontier.test_tokens")
projections = list(p.projections)
table = read_json(i.thresholds)["projections"]
thresholds = {q: [r["threshold"] for r in table[q]] for q in projections}
kw, links = {}, {}
if "kept" in i.keys():
    rows = [s for s in read_json(i.kept)["shares"] if abs(s["kept_share"] - share) < 1e-9]
    if not rows:
        raise ValueError(f"{i.kept}: no thresholds for kept share {share}")
    kw["keep_thresholds"] = {q: [r["threshold"] for r in rows[0]["projections"][q]] for q in projections}
cents = {q: i[f"centroids_{q}"] for q in projections if f"centroids_{q}" in i.keys()}
if cents:
    kw["centroids"] = {q: torch.from_numpy(load_centroids(path)[0]) for q, path in cents.items()}
    links = dict(p.cells)
preds = {q: i[f"predictor_{q}"] for q in projections if f"predictor_{q}" in i.keys()}
if preds:
    kw["predictors"], kw["predictor_share"] = {}, {}
    for q, path in preds.items():
        kw["predictors"][q] = load_predictors(path)[0]
        rep = read_json(i[f"report_{q}"])
        kw["predictor_share"][q] = rep["total"]["flops_share"]
        links.setdefault(q, None)
result = score_point(model, windows, wc.line, share, bos=tok.bos_token_id is not None, projections=projections,
                     thresholds=thresholds, seed=p.seed, **kw)
write_json(snakemake.output[0], {"model": manifest["name"], "dataset": p.dataset, "pset": wc.pset,
                                 "projections": projections, "seq_len": int(windows.shape[1]),
                                 "cells": {q: c for q, c in links.items() if c}, **result})
