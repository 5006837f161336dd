from pathlib import Path

import torch

from apc.common.atomic import read_npy
from apc.common.device import cuda_peak_memory
from apc.lines import parse
from apc.lines.store import write_calibration
from apc.perplexity.attention_masks import attention_inputs
from apc.perplexity.calibrate import layer_mlps, sample_train_inputs
from apc.rulekit import job_model, start

log = start(snakemake, "calibrate_line")
p, wc = snakemake.params, snakemake.wildcards
manifest, model, tok, device = job_model(snakemake)
mlps = layer_mlps(model)
spec = parse(wc.line)
samples = sample_train_inputs(Path(snakemake.input.ffn).parent, len(mlps), p.calibration_tokens, p.seed,
                              device=device, dtype=next(model.parameters()).dtype)
log.info("calibrating %s at kept shares %s on %d train FFN inputs per layer (%d layers)", spec.line,
         list(p.shares), len(samples[0]), len(mlps))
extra = {}
if "attention" in spec.impl.calibration_needs(spec):  # the attention inputs of train tokens, one dense pass
    tokens = torch.from_numpy(read_npy(snakemake.input.tokens))  # (n_windows, seq_len): the first windows, as
    windows = tokens[:min(len(tokens), -(-int(p.calibration_tokens) // tokens.shape[1]))]  # many as it asks for
    extra["attention"] = attention_inputs(model, windows, skip_first=tok.bos_token_id is not None)
    log.info("attention inputs of %d train tokens per layer", len(extra["attention"][0][0]))
with torch.no_grad():
    table = spec.impl.calibrate(mlps, samples, list(p.shares), dict(p.settings), lines=[spec], **extra)
for label, entry in table.items():
    if isinstance(entry, dict) and "train_compute_share" in entry:
        log.info("%s at %s: train compute share %.4f", spec.line, label, entry["train_compute_share"])
meta = {"model": manifest["name"], "line": spec.line, "calibration_tokens": int(len(samples[0])),
        "n_layers": len(mlps), "width": int(mlps[0].gate.out_features), **cuda_peak_memory(device)}
write_calibration(snakemake.output[0], {**table, "meta": meta})
