from pathlib import Path

from apc.results.plots import make_plots
from apc.common.rulekit import start

log = start(snakemake, "plots")
out = Path(snakemake.output[0])
paths = make_plots(out.parent, out)
out.mkdir(parents=True, exist_ok=True)
log.info("wrote %d plots to %s", len(paths), out)
