from pathlib import Path

from apc.common.device import cuda_peak_memory, resolve_device
from apc.clustering.experts import save_experts
from apc.clustering.routers import ffn_weights
from apc.common.atomic import write_json
from apc.rulekit import job_model, start
from apc.prediction import save_predictors
from apc.prediction.experts import fit_expert_cell

log = start(snakemake, "fit_experts")
wc, p, i, o = snakemake.wildcards, snakemake.params, snakemake.input, snakemake.output
manifest, model, _, device = job_model(snakemake)
weights = ffn_weights(model)
sets, learned, reps, report = fit_expert_cell(
    Path(i.ffn[0]).parent, Path(i.patterns[0]).parent, wc.proj, p.shared, p.n, ks=p.ks, max_iter=p.max_iter,
    max_tokens=p.max_tokens, seed=p.seed, device=p.device, fit=p.fit, weights=lambda l: weights[l], markers=p.markers)
meta = {"cell": p.cell_key, "model": manifest["name"], "projection": wc.proj, "requested_share": p.shared,
        "layers": report["layers_fitted"], "max_iter": p.max_iter, "max_tokens": p.max_tokens, "markers": report["markers"]}
save_experts(o.experts, sets, meta, representatives=reps)
save_predictors(o.router, learned, {"cell": p.cell_key, "kind": "linear", "target": "expert id"})
write_json(o.report, {"cell": p.cell_key, **report, **cuda_peak_memory(resolve_device(p.device))})
