import torch

from apc.common.atomic import read_json, read_npy, write_json
from apc.common.device import cuda_peak_memory
from apc.lines import parse
from apc.lines.store import read_calibration
from apc.perplexity.divergence import masked_scoring
from apc.perplexity.frontier import add_samples, job_generation, score_point
from apc.perplexity.protocol import select_windows
from apc.prediction import load_predictors
from apc.rulekit import job_model, start

log = start(snakemake, "frontier_line")
p, wc, i = snakemake.params, snakemake.wildcards, snakemake.input
manifest, model, tok, device = job_model(snakemake)
windows = select_windows(torch.from_numpy(read_npy(i.tokens)), p.test_tokens, key="frontier.test_tokens")
projections = list(p.projections)
scoring = masked_scoring(i.reference, windows, block_tokens=p.scoring["block_tokens"], kl_top_k=p.scoring["kl_top_k"])
table = read_json(i.thresholds)["projections"]
thresholds = {q: [r["threshold"] for r in table[q]] for q in projections}
calibration = read_calibration(i.calibration) if "calibration" in i.keys() else None
line = parse(wc.line)
impl = line.impl
generation = job_generation(i, model, tok)
predictors = {}  # a predictor file serves every share: load it once
dense = None  # a line scored after a dense prompt: dense on the same tokens, the same at every share

for j, (share, out) in enumerate(zip(map(float, p.shares), snakemake.output)):
    kw = impl.arrays(line, share, projections=projections, calibration=calibration, model=model, windows=windows,
                     settings=p.settings, inputs=i, j=j)
    preds = {q: i[f"predictor_{q}_{j}"] for q in projections if f"predictor_{q}_{j}" in i.keys()}
    if preds:  # a line decided by a predictor (apc.prediction), its FLOPs share from its report
        kw["predictors"], kw["predictor_share"] = {}, {}
        for q, path in preds.items():
            if path not in predictors:
                predictors[path] = load_predictors(path)[0]
            kw["predictors"][q] = predictors[path]
            kw["predictor_share"][q] = read_json(i[f"report_{q}_{j}"])["total"]["flops_share"]
    log.info("frontier %s/%s at kept share %g", wc.pset, wc.line, share)
    result = score_point(model, windows, line, share, bos=tok.bos_token_id is not None, projections=projections,
                         thresholds=thresholds, seed=p.seed, batch_sizes=p.batch_sizes, dense=dense, scoring=scoring,
                         generation=generation, **kw)
    add_samples(result, generation, tok, wc.line, log)
    dense = result.get("dense")
    write_json(out, {"model": manifest["name"], "dataset": p.dataset, "pset": wc.pset, "projections": projections,
                     "seq_len": int(windows.shape[1]), "cells": {q: c for q, c in p.cells[j].items() if c},
                     **result, **cuda_peak_memory(device)})
