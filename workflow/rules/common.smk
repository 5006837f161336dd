# Shared helpers: resolve and validate the config, name outputs, expand the sweep.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # use the library in place, even if not installed

from apc.common.config import ConfigError, load_schema, resolve
from apc.common.sweep import cluster_cells, perplexity_cells

SCHEMA = str(Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")

try:
    C = resolve(dict(config), load_schema(SCHEMA), root=workflow.basedir)
except ConfigError as err:
    raise WorkflowError(f"Invalid configuration: {err}") from None
validate(C, SCHEMA)  # the schema check Snakemake users expect; passes once resolve() has passed

OUT = C["outdir"]
SPLITS = ["train", "test"]
CLUSTER_CELLS = cluster_cells(C)
PPL_CELLS = perplexity_cells(C)


wildcard_constraints:
    split="train|test",
    proj="gate|up|down|down_in",
    scope="per_layer|pooled",
    method="[A-Za-z0-9_]+",
    k=r"\d+",
    seed=r"\d+",
    pset="[A-Za-z0-9_]+",


def cluster_settings(method):
    """The settings one clustering cell depends on (not the sweep lists), so extending a sweep reruns nothing."""
    c = C["cluster"]
    keys = ("layers", "density", "max_iter", "max_patterns_per_layer", "chunk_size")
    return {**{k: c[k] for k in keys}, "options": c["options"].get(method, {})}


def ppl_settings(with_modes):
    p = C["perplexity"]
    return {"test_tokens": p["test_tokens"], **({"modes": p["modes"]} if with_modes else {})}


def cell_dir(proj, scope, method, k, seed):
    return f"{OUT}/clusters/{proj}/{scope}/{method}-k{k}-s{seed}"


def centroid_files():
    return [f"{cell_dir(**c)}/centroids.npy" for c in CLUSTER_CELLS]


def eval_files():
    return [f"{OUT}/eval/{c['proj']}/{c['scope']}/{c['method']}-k{c['k']}-s{c['seed']}.csv" for c in CLUSTER_CELLS]


def ppl_files():
    files = [f"{OUT}/ppl/dense.json"]
    files += [f"{OUT}/ppl/sparse-{pset}.json" for pset in C["perplexity"]["psets"]]
    if C["perplexity"]["modes"]:
        files += [
            f"{OUT}/ppl/{c['pset']}/{c['scope']}/{c['method']}-k{c['k']}-s{c['seed']}.json" for c in PPL_CELLS
        ]
    return files


def extraction_files():
    return [f"{OUT}/patterns/{s}" for s in SPLITS] + [f"{OUT}/thresholds.json"]


def all_outputs():
    return (
        extraction_files()
        + centroid_files()
        + eval_files()
        + ppl_files()
        + [f"{OUT}/summary.csv", f"{OUT}/plots", f"{OUT}/mlflow_runs.json"]
    )
