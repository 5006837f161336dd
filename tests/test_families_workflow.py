"""End to end: tiny local models of every FFN family through a minimal DAG (thresholds, patterns, one clustering
cell, its evaluation, perplexity). One of each kind runs always (fused Phi-3, non-gated ReLU OPT,
mixture-of-experts OLMoE); GPT-2, GPT-NeoX, Falcon and Mixtral run with ``pytest --all-families``."""

import json

import numpy as np
import pytest
import torch

from apc.clustering import load_centroids
from apc.common.layout import Cell, Layout
from apc.extraction.thresholds import ZERO_THRESHOLD
from apc.extraction.patterns import PatternReader
from apc.extraction.routing import RoutingReader
from conftest import ROOT, DagRun, snakemake, start_early, started
from tiny_families import D_FF, N_LAYERS, save_tiny

pytestmark = pytest.mark.slow

N_EXPERTS, TOP_K, SEQ = 4, 2, 32
#: name -> (extract overrides, projections a cell clusters and masks)
RUNS = {
    "phi3": ("{projections: [gate, up, down_in], magnitudes: []}", "down_in"),
    "opt": ("{projections: [fc1, down_in], magnitudes: [], threshold: zero}", "down_in"),
    "olmoe": ("{projections: [gate, down_in], magnitudes: []}", "down_in"),
    "gpt2": ("{projections: [fc1, down_in], magnitudes: []}", "down_in"),  # Conv1D, GELU
    "gpt_neox": ("{projections: [fc1, down_in], magnitudes: []}", "down_in"),
    "falcon": ("{projections: [fc1, down_in], magnitudes: []}", "down_in"),
    "mixtral": ("{projections: [gate, down_in], magnitudes: []}", "down_in"),
}
KIND = {"phi3": "fused", "opt": "plain", "gpt2": "plain", "gpt_neox": "plain", "falcon": "plain",
        "olmoe": "moe", "mixtral": "moe"}
ALWAYS = ("phi3", "opt", "olmoe")  # one family of each kind; the others with --all-families
FAMILIES = [name if name in ALWAYS else pytest.param(name, marks=pytest.mark.all_families) for name in RUNS]
CELL = dict(scope="per_layer", method="apc", k=4, density=0.6, seed=0)


def config_args(name, folder, out, extract=None):
    return ["--config", "preset=smoke", f"outdir={out}", "threads=1", f"model={{name_or_path: {folder}, params_b: 0.0001}}",
            "data={seq_len: %d, train_tokens: 256, test_tokens: 128}" % SEQ,
            f"extract={extract or RUNS[name][0]}",
            "cluster={methods: [apc], k: [4], scopes: [per_layer], projections: [%s], max_iter: 3, "
            "max_patterns_per_layer: 128, cells: []}" % RUNS[name][1],
            "eval={splits: [test]}", "frontier={pset: {}}",
            "perplexity={test_tokens: 64, psets: {%s: [%s]}, modes: [centroid_only], cells: all}" % ((RUNS[name][1],) * 2)]


def targets(name, res):
    """The minimal DAG's end points: the test patterns, the cell's perplexity and the dense reference;
    the true-sparse one for the ReLU model; the cell's evaluation for the mixture of experts (per-expert
    rows; the other families' stores have the layout of the default run's)."""
    lay, cell = Layout(res), Cell(RUNS[name][1], **CELL)
    extra = [lay.ppl_sparse(RUNS[name][1])] if name == "opt" else [lay.eval_table(cell)] if KIND[name] == "moe" else []
    return [lay.patterns("test"), lay.ppl_cell(RUNS[name][1], cell), lay.ppl_dense(), *extra]


class Runs:
    """``runs[name]`` -> ``(model folder, results folder)``: the family's DAG, run once per session; the DAGs
    of the families the selected tests need run side by side, started with the session (conftest.start_early)."""

    def __init__(self, root):
        self.root, self.started, self.done = root, {}, {}

    def start(self, name):
        if name not in self.started:
            folder, res = save_tiny(name, self.root / f"tiny-{name}"), self.root / name
            self.started[name] = (folder, res, DagRun(*targets(name, res), *config_args(name, folder, res)))

    def __getitem__(self, name):
        if name not in self.done:
            self.start(name)
            folder, res, run = self.started[name]
            run.result()
            self.done[name] = (folder, res)
        return self.done[name]


@start_early("runs")
def start_runs(tmp_path_factory, items):
    runs = Runs(tmp_path_factory.mktemp("families"))
    names = {item.callspec.params.get("name") if hasattr(item, "callspec") else None for item in items}
    for name in sorted(names - {None}) + (list(ALWAYS) if None in names else []):  # no name: one of each kind
        runs.start(name)
    return runs


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    return started("runs", tmp_path_factory)


def _load(folder):
    from apc.extraction.model import load_model

    return load_model({"load_path": str(folder), "dtype": "float32"})[0]


def recomputed_fc1(model, windows):
    """OPT: per layer, fc1 ``(n_tokens, D_FF)`` (BOS positions excluded) from the layer norm's output and the
    weights of fc1."""
    normed, out = {}, {}
    hooks = [layer.final_layer_norm.register_forward_hook(lambda m, a, o, i=i: normed.__setitem__(i, o))
             for i, layer in enumerate(model.model.decoder.layers)]
    with torch.inference_mode():
        model(windows)
        for h in hooks:
            h.remove()
        for i, layer in enumerate(model.model.decoder.layers):
            fc1 = (normed[i] @ layer.fc1.weight.T + layer.fc1.bias).view(*windows.shape, -1)
            out[i] = fc1[:, 1:].reshape(-1, fc1.shape[-1])
    return out


def _cell_files(res, proj):
    lay, cell = Layout(res), Cell(proj, **CELL)
    return lay, cell, json.loads((res / "ppl" / proj / "per_layer" / f"{cell.name}.json").read_text())


@pytest.mark.parametrize("name", FAMILIES)
def test_every_site_has_patterns_centroids_eval_and_perplexity(runs, name):
    folder, res = runs[name]
    manifest = json.loads((res / "model" / "manifest.json").read_text())
    n_sites = N_LAYERS * (N_EXPERTS if KIND[name] == "moe" else 1)
    assert manifest["n_layers"] == n_sites and manifest["widths"]["down_in"] == D_FF
    assert manifest["family"] == KIND[name]
    proj = RUNS[name][1]
    lay, cell, ppl = _cell_files(res, proj)
    cents, _ = load_centroids(lay.centroids(cell))
    assert cents.shape == (n_sites, 4, D_FF)
    if KIND[name] == "moe":  # one row per expert site
        import pandas as pd

        table = pd.read_csv(res / "eval" / proj / "per_layer" / f"{cell.name}.csv", dtype={"layer": str})
        for site in range(n_sites):  # every expert scored on exactly its routed test tokens
            row = table[table["layer"] == str(site)]
            rows = PatternReader(res / "patterns" / "test" / proj / f"L{site:02d}.npy").n_tokens
            assert row["n_tokens"].tolist() == [rows] and 0 < row["recall"].item() <= 1
    dense = json.loads((res / "ppl" / "dense.json").read_text())
    assert np.isfinite(dense["ppl"]) and np.isfinite(ppl["modes"]["centroid_only"]["ppl"])
    for split in ("train", "test"):
        assert len(list((res / "patterns" / split / proj).glob("L*.npy"))) == n_sites


def test_relu_model_natural_sparsity_and_exact_sparse_mask(runs):
    """OPT with threshold zero: active = exactly non-zero; masking the zeros changes nothing at all."""
    folder, res = runs["opt"]
    th = json.loads((res / "thresholds.json").read_text())
    assert th["sparsity"] == "zero"
    model = _load(folder)
    windows = torch.from_numpy(np.load(res / "tokens" / "test.npy"))
    fc1 = recomputed_fc1(model, windows)  # {layer: (n_tokens, D_FF)} from the weights
    for l in range(N_LAYERS):
        row = th["projections"]["down_in"][l]
        assert row["threshold"] == ZERO_THRESHOLD and 0.2 < row["achieved_sparsity"] < 0.8
        assert th["projections"]["fc1"][l]["achieved_sparsity"] == 0.0  # before the ReLU: no exact zeros
        bits = PatternReader(res / "patterns" / "test" / "down_in" / f"L{l:02d}.npy").bits()
        assert (bits != (fc1[l] > 0).numpy()).mean() < 1e-3  # the stored pattern is ReLU's non-zeros
    dense = json.loads((res / "ppl" / "dense.json").read_text())
    sparse = json.loads((res / "ppl" / "sparse-down_in.json").read_text())
    assert sparse["nll"] == dense["nll"]  # masking exact zeros is the identity


@pytest.mark.parametrize("name", [n if n in ALWAYS else pytest.param(n, marks=pytest.mark.all_families)
                                  for n in RUNS if KIND[n] == "moe"])
def test_moe_routing_is_row_aligned_and_sparsity_reported(runs, name):
    folder, res = runs[name]
    summary = json.loads((res / "patterns" / "test" / "extract.json").read_text())
    moe = summary["moe"]
    assert (moe["n_experts"], moe["top_k"]) == (N_EXPERTS, TOP_K)
    assert moe["expert_active_share"] == [TOP_K / N_EXPERTS] * N_LAYERS
    assert all(abs(sum(load) - TOP_K) < 1e-9 for load in moe["expert_load"])
    assert len(moe["neuron_density"]["down_in"]) == N_LAYERS and len(moe["neuron_density"]["down_in"][0]) == N_EXPERTS
    model = _load(folder)
    windows = torch.from_numpy(np.load(res / "tokens" / "test.npy"))
    inputs = {}
    hooks = [layer.mlp.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0]))
             for i, layer in enumerate(model.model.layers)]
    with torch.inference_mode():
        model(windows)
    for h in hooks:
        h.remove()
    with torch.inference_mode():
        for l, layer in enumerate(model.model.layers):
            flat = inputs[l][:, 1:].reshape(-1, inputs[l].shape[-1])  # BOS positions excluded, as stored
            want = torch.softmax(flat @ layer.mlp.gate.weight.T, dim=-1).topk(TOP_K, dim=-1).indices.numpy()
            routing = RoutingReader(res / "patterns" / "test" / "routing" / f"L{l:02d}.npy")
            assert routing.n_tokens == summary["n_tokens"] and (np.asarray(routing._arr) == want).all()
            for e in range(N_EXPERTS):
                patterns = PatternReader(res / "patterns" / "test" / "down_in" / f"L{l * N_EXPERTS + e:02d}.npy")
                assert patterns.n_tokens == len(routing.rows_of(e)) == round(moe["expert_load"][l][e] * summary["n_tokens"])


def test_projection_of_another_family_stops_at_config_time(tmp_path):
    folder = save_tiny("opt", tmp_path / "tiny-opt")
    res = snakemake("-n", *config_args("opt", folder, tmp_path, extract="{projections: [gate, up, down_in]}"),
                    check=False)
    text = res.stdout + res.stderr
    assert res.returncode != 0
    assert ("config key 'extract.projections': gate, up not in this plain FFN (OPT, GPT-2, GPT-NeoX/Pythia, Falcon); "
            "its projections are fc1, down, down_in") in text
