from pathlib import Path

from apc.rulekit import start
from apc.results.frontier_plots import make_frontier_plots
from apc.results.plots import make_plots

log = start(snakemake, "plots")
out = Path(snakemake.output[0])
i = snakemake.input
paths = make_plots(out, i.evals, i.refs, i.ppl)
if i.frontier:
    paths += make_frontier_plots(out, i.frontier[0], i.frontier_refs)
out.mkdir(parents=True, exist_ok=True)
log.info("wrote %d plots to %s", len(paths), out)
