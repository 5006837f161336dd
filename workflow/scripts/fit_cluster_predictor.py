from apc.common.device import cuda_peak_memory, resolve_device
from apc.common.atomic import write_json
from apc.rulekit import start
from apc.prediction import save_predictors, train_cluster_cell
from apc.prediction.summary import summarize_report

log = start(snakemake, "fit_cluster_predictor")
wc, p = snakemake.wildcards, snakemake.params.predict
i = snakemake.input
preds, report = train_cluster_cell(
    i.ffn[0].rsplit("/", 1)[0], i.patterns[0].rsplit("/", 1)[0], i.centroids, wc.proj, kind=wc.kind,
    hidden=p["hidden"], top_m=p["top_m"], seed=p["seed"], device=snakemake.params.device,
    max_train_tokens=p["max_train_tokens"], fit=p["fit"], chunk_size=p["chunk_size"])
save_predictors(snakemake.output.predictor, preds, {"cell": snakemake.params.cell_key, "kind": wc.kind})
write_json(snakemake.output.report, {"cell": snakemake.params.cell_key, **report, "total": summarize_report(report),
                                     **cuda_peak_memory(resolve_device(snakemake.params.device))})
