# Shared helpers: resolve and validate the config, name outputs (apc.common.layout), expand the sweep.
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# Jobs run the library of this checkout, whatever is installed in the environment: the Snakefile's
# process imports it from here, and its jobs (separate processes) inherit PYTHONPATH.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
os.environ["PYTHONPATH"] = os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])])
os.environ["APC_SRC"] = SRC

from apc.common.config import ConfigError, load_schema, resolve
from apc.common.frontier import frontier_psets, line_cell, parse_line
from apc.common.layout import WILDCARDS as W, Cell, Layout
from apc.common.projections import PROJECTIONS
from apc.common.rulekit import dataset_name
from apc.extraction.corpus import split_settings
from apc.results.inputs import sweep_files

SCHEMA = str(Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")

try:
    C = resolve(dict(config), load_schema(SCHEMA), root=workflow.basedir)
    FILES = sweep_files(C)
except ConfigError as err:
    raise WorkflowError(f"Invalid configuration: {err}") from None
validate(C, SCHEMA)  # the schema check Snakemake users expect; passes once resolve() has passed

OUT = C["outdir"]
L = Layout(OUT)
SPLITS = ["train", "test"]


wildcard_constraints:
    split="train|test",
    proj="|".join(PROJECTIONS),
    scope="per_layer|pooled",
    method="[A-Za-z0-9_]+",
    k=r"\d+",
    density=r"[0-9.]+",
    seed=r"\d+",
    pset="[A-Za-z0-9_]+",
    kind="linear|mlp",
    factor=r"\d+",
    line=r"[A-Za-z0-9_.\-]+",
    share=r"[0-9.]+",


def cluster_settings(method):
    """The settings one clustering cell depends on (not the sweep lists), so extending a sweep reruns nothing."""
    c = C["cluster"]
    keys = ("layers", "max_iter", "max_patterns_per_layer", "chunk_size")
    return {**{k: c[k] for k in keys}, "options": c["options"].get(method, {})}


def predict_settings():
    """The fitting settings of every predictor (not the frontier's lists)."""
    p = C["predict"]
    return {k: p[k] for k in ("hidden", "top_m", "seed", "fit", "max_train_tokens", "chunk_size", "neuron_larger")}


def pset_projections(pset):
    """Projections of a perplexity or frontier projection set (the config check keeps shared names equal)."""
    return {**frontier_psets(C), **C["perplexity"]["psets"]}[pset]


def ppl_settings(with_modes):
    p = C["perplexity"]
    return {"test_tokens": p["test_tokens"], **({"modes": p["modes"]} if with_modes else {})}


def all_outputs():
    return (
        [L.patterns(s) for s in SPLITS]
        + [L.thresholds()]
        + FILES.centroids
        + FILES.evals
        + FILES.refs
        + FILES.ppl
        + FILES.predictor_reports
        + FILES.frontier
        + FILES.frontier_table
        + [L.summary(), L.plots(), L.mlflow_runs()]
    )


def tracking_uri():
    from apc.results.tracking import default_tracking_uri

    return C["mlflow"]["tracking_uri"] or default_tracking_uri(Path(OUT).parent)


onstart:
    # Fail before the first job, not after the whole DAG, when the tracking store cannot be reached.
    if any(job.rule.name == "track" for job in workflow.dag.needrun_jobs()):
        from apc.results.tracking import TrackingError, check_tracking_uri

        try:
            check_tracking_uri(tracking_uri(), C["mlflow"]["experiment"])
        except TrackingError as err:
            raise WorkflowError(str(err)) from None
