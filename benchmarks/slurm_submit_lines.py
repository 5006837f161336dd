"""Print the sbatch line snakemake-executor-plugin-slurm would make for one job of each rule.

A dry run of the real Snakefile (arguments as for snakemake, e.g.
``-n --workflow-profile workflow/profiles/slurm --config preset=mistral7b-wikitext2``); each job
goes through the plugin's own ``get_submit_command`` and ``set_gres_string``, nothing is submitted.
"""

import sys

from snakemake.cli import main
from snakemake.dag import DAG
from snakemake_executor_plugin_slurm.submit_string import get_submit_command
from snakemake_executor_plugin_slurm.utils import set_gres_string

seen: set[str] = set()
_register = DAG.register_running


def show(self, jobs):
    for job in sorted(jobs, key=lambda j: j.jobid):
        if job.rule.name in seen or job.rule.name in self.workflow._localrules:
            continue
        seen.add(job.rule.name)
        r = job.resources
        params = {"run_uuid": "RUN", "slurm_logfile": f".snakemake/slurm_logs/rule_{job.rule.name}/%j.log",
                  "comment_str": f"rule_{job.rule.name}", "account": "-A ACCOUNT",
                  "partition": f"-p {r.get('slurm_partition')}", "workdir": "."}
        print(f"{job.rule.name}: {get_submit_command(job, params)}{set_gres_string(job)}", file=sys.stderr)
    return _register(self, jobs)


DAG.register_running = show
main(sys.argv[1:])
