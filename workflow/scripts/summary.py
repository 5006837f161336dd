from apc.common.rulekit import start
from apc.results.summary import write_summary

log = start(snakemake, "summary")
path = write_summary(snakemake.output[0].rsplit("/", 1)[0], snakemake.output[0])
log.info("wrote %s", path)
