from apc.common.atomic import write_json
from apc.rulekit import start

log = start(snakemake, "resolved_config")
write_json(snakemake.output[0], snakemake.params.config)
