from pathlib import Path

from apc.common.rulekit import start
from apc.results.plots import make_plots

log = start(snakemake, "plots")
out = Path(snakemake.output[0])
i = snakemake.input
paths = make_plots(out, i.evals, i.refs, i.ppl)
out.mkdir(parents=True, exist_ok=True)
log.info("wrote %d plots to %s", len(paths), out)
