from apc.common.atomic import read_json
from apc.rulekit import start
from apc.results.frontier import write_decision_table, write_frontier_table, write_generation_samples

log = start(snakemake, "frontier_table")
i = snakemake.input
kw = {}
if "time_table" in i.keys():
    widths = read_json(i.model)["widths"]
    kw = dict(time_table=i.time_table, d_model=int(widths["down"]), d_ff=int(widths["down_in"]))
    log.info("time shares from %s at d_model %d, d_ff %d", i.time_table, kw["d_model"], kw["d_ff"])
table = write_frontier_table(snakemake.output.table, i.points, i.refs, **kw)
write_decision_table(snakemake.output.decision, table, points=i.points,
                     pairs_path=snakemake.output.pairs if "pairs" in snakemake.output.keys() else None)
if "samples" in snakemake.output.keys():  # every point's continuations of the sample prompts (the samples page)
    write_generation_samples(snakemake.output.samples, i.points)
