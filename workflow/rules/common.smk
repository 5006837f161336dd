# Shared helpers: resolve and validate the config, name outputs (apc.common.layout), expand the sweep.
import json
import re
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

# Jobs run the library of this checkout, whatever is installed in the environment: the Snakefile's
# process imports it from here, and its jobs (separate processes) inherit PYTHONPATH.
SRC = str(Path(workflow.basedir) / "src")
sys.path.insert(0, SRC)
os.environ.update(PYTHONPATH=os.pathsep.join([SRC, *filter(None, [os.environ.get("PYTHONPATH")])]), APC_SRC=SRC)

from apc.common.config import load_schema
from apc.common.errors import ConfigError
from apc.common.frontier import frontier_psets, greedy_cells
from apc.common.frontier import reference_tokens as frontier_reference_tokens
from apc.lines.plan import (calibration_inputs, calibration_lines, job_groups, line_cells, line_inputs, line_shares,
                            own_job_lines, resolve_config, settings_of)
from apc.common.layout import WILDCARDS as W, Cell, Layout
from apc.common.families import PROJECTIONS
from apc.common.sweep import perplexity_batch_of, perplexity_batches
from apc.rulekit import dataset_name
from apc.common.storage import ffn_inputs_captured, storage_plan
from apc.extraction.corpus import split_settings
from apc.results.inputs import sweep_files

SCHEMA = str(Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")

try:
    C = resolve_config(dict(config), load_schema(SCHEMA), root=workflow.basedir)
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
    batch=r"b[0-9a-f]+",


def cluster_settings(method):
    """The settings one clustering cell depends on (not the sweep lists), so extending a sweep reruns nothing."""
    c = C["cluster"]
    keys = ("layers", "max_iter", "max_patterns_per_layer", "chunk_size")
    return {**{k: c[k] for k in keys}, "options": c["options"].get(method, {})}


def norms_input(method):
    """``{"norms": down_norms.npy}`` for a method fitted or scored with ``output`` weighting, else ``{}``."""
    from apc.common.methods import method_spec

    base, opts = method_spec(method, C["cluster"]["options"])
    return {"norms": L.down_norms()} if base == "apc_weighted" and opts.get("weighting") == "output" else {}


def allocation_input(method):
    """``{"allocation": cell_allocation.json}`` for a cluster variant with greedy per-layer densities."""
    opts = C["cluster"]["options"].get(method) or {}
    return {"allocation": L.cell_allocation()} if opts.get("allocation") == "layer-greedy" else {}


def one_of(names):
    """A wildcard constraint matching exactly the given names (nothing when there are none)."""
    return "|".join(re.escape(n) for n in names) or "(?!)"


def predict_settings():
    """The fitting settings of every predictor (not the frontier's lists)."""
    p = C["predict"]
    return {k: p[k] for k in ("hidden", "top_m", "seed", "fit", "max_train_tokens", "chunk_size", "neuron_larger")}


def pset_projections(pset):
    """Projections of a perplexity or frontier projection set (the config check keeps shared names equal)."""
    return {**frontier_psets(C), **C["perplexity"]["psets"]}[pset]


def ppl_settings(with_modes, test_tokens=None):
    """The perplexity settings of a scoring job (``test_tokens``: its budget, by default perplexity.test_tokens)."""
    p = C["perplexity"]
    return {"test_tokens": p["test_tokens"] if test_tokens is None else test_tokens, **scoring_settings(),
            **({"modes": p["modes"], "kernel": p.get("kernel", "hooks")} if with_modes else {})}


def scoring_settings():
    """How every scoring job measures: the interval's block and the KL's dense reference."""
    p = C["perplexity"]
    return {"block_tokens": p.get("block_tokens", 32), "kl_reference": p.get("kl_reference", "exact"),
            "kl_top_k": p.get("kl_top_k", 64)}


def reference_tokens():
    """Test tokens the dense job scores and keeps as the KL's reference (apc.common.frontier.reference_tokens)."""
    return frontier_reference_tokens(C)


def all_outputs():
    return (
        [L.patterns(s) for s in SPLITS]
        + [L.thresholds()]
        + FILES.centroids
        + FILES.evals
        + FILES.refs
        + FILES.ppl
        + FILES.predictor_reports
        + FILES.experts_reports
        + FILES.frontier
        + FILES.frontier_table
        + [L.summary(), L.plots(), L.mlflow_runs()]
    )


def tracking_uri():
    from apc.results.tracking import default_tracking_uri

    return C["mlflow"]["tracking_uri"] or default_tracking_uri(Path(OUT).parent)


onstart:
    # Before the first job: the storage plan (every store's size and the key sizing it) beside the free
    # space of the output folder, stopping with one line when the rest of the run cannot fit.
    from snakemake.logging import logger
    from apc.common.storage import free_bytes

    _free = free_bytes(OUT)
    logger.info(STORAGE_PLAN.table(_free))
    try:
        STORAGE_PLAN.check_fits(_free)
    except OSError as err:
        raise WorkflowError(str(err)) from None
    # Fail before the first job, not after the whole DAG, when the tracking store cannot be reached.
    if any(job.rule.name == "track" for job in workflow.dag.needrun_jobs()):
        from apc.results.tracking import TrackingError, check_tracking_uri

        try:
            check_tracking_uri(tracking_uri(), C["mlflow"]["experiment"])
        except TrackingError as err:
            raise WorkflowError(str(err)) from None


# -- Job resources ---------------------------------------------------------------------------------
# Every rule declares mem_mb (host RAM) and runtime (minutes); every job that loads the model or may
# run on CUDA also declares gpu (1 when the jobs use CUDA, else 0).  `--resources gpu=1` (the default
# profile) then runs one GPU job at a time beside parallel CPU jobs; the slurm profile turns gpu into
# a GPU request.  A new step takes its defaults in one line of its `resources` directive, e.g.
# `**model_job(tokens)`, `**gpu_job(mem_mb, minutes)` or `**cpu_job()`.  The sizes come from the
# model's manifest once prepare_model has run, else from `model.params_b` and a 7B-class shape.
# Rule priorities order the ready jobs: the model passes first (everything reads them), then the
# long single-thread jobs (predictor fits, clustering, perplexity batches, frontier lines), so the
# short evaluations fill the gaps instead of delaying the long ones to the end of the run.


def _model_shape():
    """``(parameters, layers, widest FFN width, d_model, {projection: width})``: from the manifest once
    prepare_model has run, else from ``model.shape`` and ``model.params_b``, else a 7B-class shape."""
    manifest = Path(L.manifest())
    m = json.loads(manifest.read_text()) if manifest.exists() else {}
    shape = C["model"].get("shape") or {}
    params = m.get("n_params") or (C["model"].get("params_b") or 7.0) * 1e9
    widths = m.get("widths", {})
    d_model = widths.get("down") or shape.get("d_model") or 4096
    return (params, m.get("n_layers") or shape.get("n_layers") or 32,
            max(widths.values(), default=shape.get("d_ff") or 16384), d_model, widths or {"down": d_model})


def _uses_cuda():
    if C["device"] != "auto":
        return C["device"] == "cuda"
    import torch

    return torch.cuda.is_available()


GPU = int(_uses_cuda())
STORAGE_PLAN = storage_plan(C, root=workflow.basedir)  # every store's planned bytes (also printed at start)
FFN_INPUTS = ffn_inputs_captured(C)  # extract_patterns also writes the FFN-input stores
N_PARAMS, N_LAYERS, FFN_WIDTH, D_MODEL, MODEL_WIDTHS = _model_shape()
WEIGHTS_MB = N_PARAMS * {"float32": 4, "bfloat16": 2, "float16": 2}[C["model"]["dtype"]] / 2**20
# prepare_model converts a GGUF file or fetches from the hub (the weights in RAM twice); for a local
# folder of safetensors it reads the configuration and the tokenizer only (0.8 GB measured)
_NAME = C["model"]["name_or_path"]
PREPARE_MODEL_MB = 2048 if (Path(_NAME).expanduser().is_dir() and not C["model"].get("gguf_file")
                            and not _NAME.startswith("embedded:")) else 2 * WEIGHTS_MB + 2048
WHOLE_SPLIT_TOKENS = 1_000_000  # assumed for a `null` (whole split) budget until prepare_data has counted it
MB = 2**20


def _tokens(n, split="test"):
    """A token budget; a `null` one is the split's size, counted by prepare_data (else assumed)."""
    if n is not None:
        return n
    meta = Path(L.tokens_meta(split))
    if meta.exists():
        m = json.loads(meta.read_text())
        return int(m["n_windows"]) * int(m["seq_len"])
    return WHOLE_SPLIT_TOKENS


def cpu_job(mem_mb=2048, runtime=10):
    """Resources of a job that never touches the GPU (at least 5 minutes)."""
    return {"mem_mb": int(mem_mb), "runtime": int(max(5, runtime))}


def gpu_job(mem_mb, runtime):
    """Resources of a job that runs on CUDA when the workflow does (``gpu`` = 1, else 0; at least 4
    minutes there, 5 on the CPU)."""
    return {"mem_mb": int(mem_mb), "runtime": int(max(4 if GPU else 5, runtime)), "gpu": GPU}


# The GPU branches below are calibrated on the paper-shaped run on one H200 (docs/paper_shaped.md):
# every request 1.5-4x the job's own peak host RSS (getrusage, logged at exit) and wall time there.


def model_job(tokens, passes=1):
    """A job that loads the model and runs ``passes`` forward passes over ``tokens`` tokens: host RAM
    for the weights twice (staged on the host, also on a GPU: 0.9 GB + the weights measured) plus
    headroom; time at a conservative FLOP rate (on a GPU 5e13 FLOP/s with a 2x margin)."""
    flops = 2 * N_PARAMS * _tokens(tokens) * passes
    load_s = WEIGHTS_MB / 200
    if GPU:
        return gpu_job(2 * WEIGHTS_MB + 4096, 1 + (2 * flops / 5e13 + load_s) / 60)
    seconds = 3 * flops / (2e10 * C["threads"]) + load_s
    return gpu_job(2 * WEIGHTS_MB + 4096, 10 + seconds / 60)


def store_mb(split, stores=("patterns", "magnitudes")):
    """Planned MB of the ``stores`` of ``split`` (the storage plan's figures)."""
    parts = [(st.bytes, Path(st.name).parts) for st in STORAGE_PLAN.stores]
    return sum(n for n, p in parts if p[0] in stores and p[1:2] == (split,)) / MB


def pattern_job(n_patterns, k, chunk_size, iterations=1, resident=0, sets=1, copies=1.4, extra_mb=0, width=None):
    """A job that compares ``n_patterns`` patterns with ``k`` centroids (``sets`` sets of them: one per
    layer, or one pooled), ``iterations`` times, in chunks of ``chunk_size`` unpacked float32 rows,
    holding ``resident`` of the patterns packed in RAM and ``extra_mb`` more.

    On the CPU the chunks are on the host; on a GPU they are on the device, and the host holds the
    packed patterns and ``copies`` float32 copies of the centroids (1.4 measured when clustering,
    0.5 when evaluating), doubled for headroom. ``width``: the projection's (default: the widest)."""
    width = width or FFN_WIDTH
    flop_rate = 2e13 if GPU else 2e10
    minutes = 2 * 2 * n_patterns * k * width * iterations / flop_rate / 60
    if GPU:
        mem = 2 * (1024 + resident * width / 8 / MB + copies * sets * k * width * 4 / MB + extra_mb)
        return gpu_job(mem, 2 + minutes)
    mem = 1024 + resident * width / 8 / MB + (3 * chunk_size + 2 * k) * width * 4 / MB + extra_mb
    return gpu_job(mem, 10 + minutes)


def predictor_job(tokens=None):
    """A job that fits (or evaluates) one predictor per layer on the train split: one layer's FFN inputs
    (float32) and packed patterns in RAM, epochs of small products."""
    c = C["predict"]
    n = c["max_train_tokens"] or tokens or _tokens(C["data"]["train_tokens"], "train")
    mem = 2048 + n * (4 * D_MODEL + FFN_WIDTH / 8) / MB * 2
    flop_rate = 2e13 if GPU else 1e10
    epochs = c["fit"].get("epochs", 8)
    return gpu_job(mem, 10 + N_LAYERS * 6 * n * D_MODEL * FFN_WIDTH / 8 * epochs / flop_rate / 60)


def _sets(scope):
    """Centroid sets of a cell: one per layer, or one pooled."""
    return N_LAYERS if scope == "per_layer" else 1


def proj_width(proj):
    """Width of projection ``proj`` from the manifest (the widest FFN width before it exists)."""
    return int(MODEL_WIDTHS.get(proj, FFN_WIDTH))


def cluster_resources(wc):
    c = C["cluster"]
    n = N_LAYERS * (c["max_patterns_per_layer"] or _tokens(C["data"]["train_tokens"], "train"))
    width = proj_width(wc.proj)
    extra = 0
    if wc.method.startswith("apc_weighted"):  # fits on the magnitude rows, held too
        extra = store_mb("train", ("magnitudes",))
    elif wc.method.startswith("apc_product"):  # one layer's fit sample unpacked, 2 bytes per bit
        extra = n / N_LAYERS * width * 2 / MB
    return pattern_job(n, int(wc.k), c["chunk_size"], c["max_iter"], resident=n, sets=_sets(wc.scope),
                       extra_mb=extra, width=width)


def evaluate_resources(wc):
    tokens = sum(_tokens(C["data"][f"{s}_tokens"], s) for s in C["eval"]["splits"])
    width = proj_width(wc.proj)
    if GPU:  # streamed from disk; host RAM for the interpreter, half the centroids' float32 copies and,
        # where magnitudes are scored, 1.5 chunks of them (1 byte each) at a time
        mags = wc.proj in C["extract"]["magnitudes"]
        extra = 376 + 1.5 * C["eval"]["chunk_size"] * width / MB * mags
        return pattern_job(N_LAYERS * tokens, int(wc.k), C["eval"]["chunk_size"], sets=_sets(wc.scope), copies=0.5,
                           extra_mb=extra, width=width)
    return pattern_job(N_LAYERS * tokens, int(wc.k), C["eval"]["chunk_size"], width=width)  # streamed from disk


def per_cell(resources):
    """``resources(wildcards) -> dict`` as Snakemake's per-key callables, for cell-dependent sizes."""
    keys = ("mem_mb", "runtime", "gpu")
    return {key: (lambda wildcards, key=key: resources(wildcards)[key]) for key in keys}


def ppl_tokens():
    return C["perplexity"]["test_tokens"] or _tokens(C["data"]["test_tokens"], "test")


def extract_resources(wc):
    """A model pass over the larger split, plus (on a GPU, where the host holds them while they are
    written) the planned bytes of this split's pattern and magnitude stores."""
    res = model_job(max(_tokens(C["data"][f"{s}_tokens"], s) for s in SPLITS))
    if GPU:
        res["mem_mb"] += int(store_mb(wc.split))
    return res


PPL_BATCHES = perplexity_batches(C)  # (pset, batch id, cells), listed once


def _ppl_batch(wc):
    for pset, batch, cells in PPL_BATCHES:
        if pset == wc.pset and batch == wc.batch:
            return cells
    raise WorkflowError(f"perplexity batch {wc.pset}/{wc.batch} is not in this config (perplexity.cells, batch_cells)")


def ppl_batch_inputs(wc):
    """The centroid files a batch of perplexity cells masks with: ``c{i}_{proj}`` per cell and projection."""
    ins = {}
    for i, c in enumerate(_ppl_batch(wc)):
        ins.update({f"c{i}_{q}": L.centroids(Cell(q, c.scope, c.method, c.k, c.density, c.seed))
                    for q in C["perplexity"]["psets"][wc.pset]})
        ins.update(norms_input(c.method))
    return ins


def ppl_batch_cells(wc):
    return [{"scope": c.scope, "method": c.method, "k": int(c.k), "density": float(c.density), "seed": int(c.seed)}
            for c in _ppl_batch(wc)]


def ppl_batch_resources(wc):
    """A model job over the batch's passes, plus host RAM for its cells' centroids (all loaded at once,
    unpacked: K x width bytes per layer, or one set for a pooled cell), twice, and 6 GB of scoring
    buffers (measured on the paper-shaped run)."""
    cells = _ppl_batch(wc)
    res = model_job(ppl_tokens(), passes=len(C["perplexity"]["modes"]) * len(cells))
    cent = sum(int(c.k) * FFN_WIDTH * _sets(c.scope) for c in cells)
    res["mem_mb"] += int(2 * cent * len(C["perplexity"]["psets"][wc.pset]) / MB) + 6144
    return res


def ppl_batch_of_cell(wc):
    cell = Cell("", wc.scope, wc.method, int(wc.k), float(wc.density), int(wc.seed))
    try:
        return L.ppl_batch(wc.pset, perplexity_batch_of(PPL_BATCHES, wc.pset, cell))
    except KeyError as err:
        raise WorkflowError(str(err.args[0])) from None


def frontier_line_inputs(wc):
    """Inputs of one frontier line at every kept share (apc.lines.plan.line_inputs)."""
    return line_inputs(C, L, wc.pset, wc.line)


def frontier_line_cells(wc):
    """``[{proj: cell key}]`` per kept share: the clustering cells a cluster line links to."""
    return line_cells(C, wc.pset, wc.line)


# Neuron experts (workflow/rules/experts.smk)
def experts_cell_params(wc):
    """The cell of an experts job from its folder name ``s{shared}-e{n}``."""
    m = re.fullmatch(r"s([0-9.]+)-e(\d+)", wc.ecell)
    if m is None:
        raise WorkflowError(f"not a neuron-experts cell: {wc.ecell!r} (expected s<shared>-e<n>)")
    return {"shared": float(m[1]), "n": int(m[2])}


def experts_line_inputs(wc):
    """The experts file (and, for the learned router, its routers) of an experts line (apc.lines.plan.line_inputs)."""
    return line_inputs(C, L, wc.pset, wc.line)
