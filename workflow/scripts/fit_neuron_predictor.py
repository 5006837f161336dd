from apc.common.device import cuda_peak_memory, resolve_device
from apc.common.atomic import write_json
from apc.rulekit import start
from apc.extraction.ffn_inputs import FfnInputReader, ffn_input_path
from apc.extraction.patterns import PatternReader, pattern_path
from apc.prediction import ClusterPredictor, neuron_ranks, save_predictors, train_neuron_cell
from apc.prediction.summary import summarize_report

log = start(snakemake, "fit_neuron_predictor")
wc, p = snakemake.wildcards, snakemake.params.predict
ffn_root, pattern_root = snakemake.input.ffn[0].rsplit("/", 1)[0], snakemake.input.patterns[0].rsplit("/", 1)[0]
d_model = FfnInputReader(ffn_input_path(ffn_root, "train", 0)).width
d_ff = PatternReader(pattern_path(pattern_root, "train", wc.proj, 0)).width
matched = ClusterPredictor(d_model, int(wc.k), wc.kind, p["hidden"])
ranks = neuron_ranks(matched.flops_per_token(), d_model, d_ff, larger=p["neuron_larger"] or 2)
rank = ranks[0] * int(wc.factor)
log.info("neuron predictor rank %d: %d x the rank matching the %s cluster predictor of K=%d (%d FLOPs/token)",
         rank, int(wc.factor), wc.kind, int(wc.k), matched.flops_per_token())
preds, report = train_neuron_cell(
    ffn_root, pattern_root, wc.proj, rank, densities=snakemake.params.densities, seed=p["seed"],
    device=snakemake.params.device, max_train_tokens=p["max_train_tokens"], fit=p["fit"], chunk_size=p["chunk_size"])
meta = {"matched": {"kind": wc.kind, "k": int(wc.k), "flops_per_token": matched.flops_per_token()},
        "factor": int(wc.factor), "rank": rank}
save_predictors(snakemake.output.predictor, preds, meta)
write_json(snakemake.output.report, {**meta, **report, "total": summarize_report(report),
                                     **cuda_peak_memory(resolve_device(snakemake.params.device))})
