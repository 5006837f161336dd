from apc.common.atomic import read_json, write_json
from apc.rulekit import start
from apc.results.tracking import git_info, runs_page, sync_results

log = start(snakemake, "track")
p = snakemake.params
result = sync_results(read_json(snakemake.input.config), tracking_uri=p.tracking_uri, experiment=p.experiment,
                      git_info=git_info(p.repo))
write_json(snakemake.output[0], {"tracking_uri": p.tracking_uri, "experiment": p.experiment, **result,
                                  "runs_page": runs_page(result["experiment_id"])})
