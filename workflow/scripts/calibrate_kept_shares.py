from apc.common.atomic import write_json
from apc.rulekit import start
from apc.extraction.extract import kept_shares_from_histograms

log = start(snakemake, "calibrate_kept_shares")
p = snakemake.params
result = kept_shares_from_histograms(snakemake.input.histograms, p.projections, p.kept_shares)
log.info("kept-share thresholds for %s at %s from the calibration histograms (%d tokens)", p.projections,
         p.kept_shares, result["n_tokens"])
write_json(snakemake.output[0], result)
