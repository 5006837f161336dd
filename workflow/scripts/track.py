from pathlib import Path

from apc.common.atomic import write_json
from apc.common.rulekit import start
from apc.results.tracking import default_tracking_uri, git_info, sync_results

log = start(snakemake, "track")
p = snakemake.params
outdir = Path(snakemake.output[0]).parent
uri = p.tracking_uri or default_tracking_uri(outdir.parent)
result = sync_results(outdir, p.config, tracking_uri=uri, experiment=p.experiment, git_info=git_info(p.repo))
write_json(snakemake.output[0], {"tracking_uri": uri, "experiment": p.experiment, **result})
