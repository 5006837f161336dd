from apc.rulekit import start
from apc.results.summary import write_summary

log = start(snakemake, "summary")
i = snakemake.input
write_summary(snakemake.output[0], i.evals, i.metas, i.refs, i.ppl)
