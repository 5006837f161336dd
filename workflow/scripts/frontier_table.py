from apc.common.rulekit import start
from apc.results.frontier import write_frontier_table

log = start(snakemake, "frontier_table")
write_frontier_table(snakemake.output[0], snakemake.input.points, snakemake.input.refs)
