import torch

from apc.clustering.experts import load_experts
from apc.common.atomic import read_json, read_npy, write_json
from apc.rulekit import job_model, start
from apc.common.device import cuda_peak_memory
from apc.perplexity.divergence import masked_scoring
from apc.perplexity.experts_line import score_experts_point
from apc.perplexity.frontier import add_samples, job_generation
from apc.perplexity.protocol import select_windows
from apc.prediction import load_predictors

log = start(snakemake, "frontier_line_experts")
p, wc, i = snakemake.params, snakemake.wildcards, snakemake.input
manifest, model, tok, device = job_model(snakemake)
windows = select_windows(torch.from_numpy(read_npy(i.tokens)), p.test_tokens, key="frontier.test_tokens")
projections = list(p.projections)
scoring = masked_scoring(i.reference, windows, block_tokens=p.scoring["block_tokens"], kl_top_k=p.scoring["kl_top_k"])
if len(projections) != 1:
    raise ValueError(f"an experts line masks one projection, the set {wc.pset!r} has {projections}")
proj = projections[0]
table = read_json(i.thresholds)["projections"]
thresholds = {proj: [r["threshold"] for r in table[proj]]}
sets, side = load_experts(i.experts)
learned = load_predictors(i.router)[0] if "router" in i.keys() else None
generation = job_generation(i, model, tok)
for share, out in zip(map(float, p.shares), snakemake.output):
    log.info("frontier %s/%s at compute share %g", wc.pset, wc.line, share)
    result = score_experts_point(model, windows, wc.line, share, bos=tok.bos_token_id is not None, projection=proj,
                                 thresholds=thresholds, sets=sets, reps=side.get("representatives"), learned=learned,
                                 seed=p.seed, batch_sizes=p.batch_sizes, generation=generation, **scoring)
    add_samples(result, generation, tok, wc.line, log)
    log.info("k = %d experts: kept %.3f, compute %.3f, perplexity %.3f", result["k"], result["kept_share"],
             result["compute_share"], result["ppl"])
    write_json(out, {"model": manifest["name"], "dataset": p.dataset, "pset": wc.pset, "projections": projections,
                     "seq_len": int(windows.shape[1]), "cells": {proj: side["cell"]}, **result,
                     **cuda_peak_memory(device)})
