"""Run the Snakemake CLI on the real Snakefile as a dry run, and at every round ask Snakemake's own job
selector which of the ready jobs it would start with the global resources (``--resources``).

A dry run marks all ready jobs running at once, so this records, per round, the ``gpu`` of the ready
jobs and of the selection into the JSON file named by ``SCHED_STATS``.
"""

import json
import os
import sys

from snakemake.cli import main
from snakemake.dag import DAG
from snakemake.scheduling import job_scheduler as js

rounds = []
schedulers = []
_init, _register = js.JobScheduler.__init__, DAG.register_running


def gpu(job):
    return int(job.scheduler_resources.get("gpu", 0) or 0)


def capture(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    schedulers.append(self)


def select_each_round(self, jobs):
    sched = schedulers[-1]
    ready = sorted(jobs, key=lambda j: j.jobid)
    chosen = sched._job_selector(ready, sched.remaining_jobs, dict(sched.global_resources), {})
    rounds.append({"ready": [j.rule.name for j in ready if gpu(j)], "selected": [j.rule.name for j in chosen if gpu(j)]})
    return _register(self, jobs)


js.JobScheduler.__init__ = capture
DAG.register_running = select_each_round
try:
    main(sys.argv[1:])
finally:
    with open(os.environ["SCHED_STATS"], "w") as f:
        json.dump(rounds, f)
