"""Weighted and product clustering cells through the stage functions: config, sweep, fit, evaluation, perplexity."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml

from apc.clustering import cluster
from apc.clustering.cell import fit_cell
from apc.clustering.sources import weighted_layer
from apc.common.atomic import write_json
from apc.common.config import resolve
from apc.common.errors import ConfigError
from apc.common.layout import Cell
from apc.common.sweep import cluster_cells, grid_cells, perplexity_cells
from apc.evaluation.evaluate import evaluate_cell
from apc.extraction.extract import calibrate_thresholds, extract_patterns
from apc.extraction.magnitudes import down_column_norms
from apc.extraction.patterns import pattern_path
from apc.perplexity.protocol import score_cell
from conftest import ROOT

RAW = yaml.safe_load((ROOT / "config.yaml").read_text())
OPTIONS = RAW["presets"]["default"]["cluster"]["options"]
FIT = dict(layers="all", max_iter=3, max_patterns_per_layer=None, chunk_size=64, device="cpu")


def res(preset="default", **over):
    raw = copy.deepcopy(RAW)
    raw.update(preset=preset, **over)
    return resolve(raw, root=ROOT)


# --------------------------------------------------------------------------- config and sweep


def test_extra_cells_add_down_in_weighted_and_product_cells_without_multiplying_the_sweep():
    c = res("frontier")  # the default's cells plus product APC
    cells = grid_cells(c)
    down_in = {x for x in cells if x.proj == "down_in"}
    assert {(x.method, x.k) for x in down_in} == {("apc", 128), ("apc_weighted", 128), ("apc_product", 64)}
    assert all(x.scope == "per_layer" for x in down_in)
    assert {x.method for x in cells if x.proj == "gate"} == set(c["cluster"]["methods"])
    pairs = perplexity_cells(c)
    by_set = {p: {x.group for q, x in pairs if q == p} for p in c["perplexity"]["psets"]}
    # the down_in set is scored with exactly the groups that have a down_in cell; the paper set never with them
    assert by_set["down_in"] == {x.group for x in down_in}
    assert not any(g[1] in ("apc_weighted", "apc_product") for g in by_set["paper"])
    assert ("per_layer", "apc", 128, 0.6, 0) in by_set["paper"]


def test_magnitude_preset_compares_every_variant_at_equal_id_bits():
    c = res("magnitude")
    cells = grid_cells(c)
    methods = {x.method for x in cells}
    assert methods == {"apc", "apc_weighted", "apc_wout", "apc_product"}
    assert {x.density for x in cells if x.method == "apc_wout"} == {0.5, 0.6, 0.7, 0.8}
    assert Cell("down_in", "per_layer", "apc", 4096, 0.6, 0) in cells
    assert Cell("down_in", "per_layer", "apc_product", 64, 0.6, 0) in cells
    assert c["perplexity"]["psets"] == {"down_in": ["down_in"]} and c["perplexity"]["modes"] == ["centroid_only"]


def test_variant_fixed_k_follows_its_method():
    c = res("smoke", cluster={"methods": ["apc", "mask1"], "options": {"mask1": {"method": "static"}}})
    assert {x.k for x in cluster_cells(c) if x.method == "mask1"} == {1}


@pytest.mark.parametrize("over, key", [
    ({"cluster": {"cells": [{"projection": "gate", "scope": "per_layer", "method": "apc_weighted", "k": 8}]}},
     "'extract.magnitudes'"),
    ({"extract": {"magnitudes": []}, "cluster": {"methods": ["apc", "apc_weighted"]}},
     "'extract.magnitudes'"),
    ({"cluster": {"methods": ["apc", "apc_x"], "options": {"apc_x": {"method": "kmedoids"}}}},
     "'cluster.options.apc_x.method': unknown method 'kmedoids'"),
    ({"cluster": {"cells": [{"projection": "down_in", "scope": "per_layer", "method": "nope", "k": 8}]}},
     "'cluster.cells': unknown method 'nope'"),
    ({"cluster": {"cells": [{"projection": "gate", "scope": "per_layer", "method": "apc_wout", "k": 8}],
                  "projections": ["gate", "down_in"]}, "extract": {"magnitudes": ["gate", "down_in"]}},
     "'cluster.options.apc_wout.weighting'"),
    ({"cluster": {"cells": [{"projection": "down_in", "scope": "per_layer", "method": "apc", "k": 8,
                             "density": 1.5}]}}, "'cluster.cells.0.density'"),
    ({"cluster": {"density": [0.6, 0]}}, "'cluster.density'"),
    ({"cluster": {"methods": ["apc_product"], "options": {"apc_product": {"groups": 0}}}},
     "'cluster.options.apc_product.groups'"),
    ({"extract": {"projections": ["gate"], "magnitudes": ["down_in"]},
      "cluster": {"projections": ["gate"], "cells": []}, "perplexity": {"psets": {"g": ["gate"]}}},
     "'extract.magnitudes'"),
])
def test_bad_magnitude_config_names_the_key(over, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("(", r"\(")):
        res("smoke", **over)


# --------------------------------------------------------------------------- a real (tiny) store


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_llama_module):
    root = tmp_path_factory.mktemp("store")
    model = tiny_llama_module
    gen = torch.Generator().manual_seed(3)
    train, test = torch.randint(1, 128, (6, 17), generator=gen), torch.randint(1, 128, (3, 17), generator=gen)
    th = calibrate_thresholds(model, train, ["gate", "down_in"], 0.5, skip_first=True)
    for split, windows in (("train", train), ("test", test)):
        meta = {"model": "tiny", "dataset": "random"}
        summary = extract_patterns(model, windows, th, ["gate", "down_in"], root, split, meta, skip_first=True,
                                   magnitudes=["down_in"])
        write_json(root / split / "extract.json", {**meta, **summary})
    return root, down_column_norms(model), th


@pytest.fixture(scope="module")
def tiny_llama_module():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=44, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).eval()


def test_weighted_variant_fits_on_the_stored_magnitudes(store):
    root, norms, _ = store
    cents, meta = fit_cell(root / "train", "down_in", "per_layer", "apc_wout", 4, 1, density=0.5,
                           options=OPTIONS["apc_wout"], column_norms=norms, **FIT)
    assert meta["method"] == "apc_wout" and meta["base_method"] == "apc_weighted"
    assert meta["options"]["weighting"] == "output" and "method" not in meta["options"]
    opts = {k: v for k, v in OPTIONS["apc_wout"].items() if k != "method"}
    for layer in range(3):  # exactly the clustering of that layer's output-weighted magnitudes, same seeded rows
        data = weighted_layer(pattern_path(root, "train", "down_in", layer), None, 1 * 1_000_003 + layer,
                              weighting="output", column_norms=norms)
        want = cluster(data, 4, method="apc_weighted", density=0.5, seed=1, max_iter=3, device="cpu",
                       chunk_size=64, **opts)
        assert torch.equal(cents[layer], want.centroids)
    with pytest.raises(ValueError, match="column_norms"):
        fit_cell(root / "train", "down_in", "per_layer", "apc_wout", 4, 1, density=0.5, options=OPTIONS["apc_wout"],
                 **FIT)


def test_product_cell_meta_reads_as_k_per_group_and_mask_density(store):
    root, _, _ = store
    cents, meta = fit_cell(root / "train", "down_in", "pooled", "apc_product", 4, 0, density=0.5,
                           options=OPTIONS["apc_product"], **FIT)
    assert cents.shape == (1, 8, 44)
    assert meta["product_groups"] == 2 and meta["k_per_group"] == 4 and meta["k"] == 4
    assert meta["mask_density"] == pytest.approx(0.5) and meta["density"] == pytest.approx(0.25)
    assert len(meta["group_labels"]) == 1 and sorted(set(meta["group_labels"][0])) == [0, 1]


def test_bad_cell_inputs_give_one_clear_error(store):
    root, _, _ = store
    with pytest.raises(ValueError, match="does not divide the layer width 44"):
        fit_cell(root / "train", "down_in", "per_layer", "apc_product", 4, 0, density=0.5,
                 options={"groups": 3}, **FIT)
    with pytest.raises(ValueError, match="extract.magnitudes"):
        fit_cell(root / "train", "gate", "per_layer", "apc_weighted", 4, 0, density=0.5, options={}, **FIT)
    for d in (0.0, 1.5):
        with pytest.raises(ValueError, match="density"):
            fit_cell(root / "train", "down_in", "per_layer", "apc", 4, 0, density=d, options={}, **FIT)


def test_every_table_gets_mass_recall_where_magnitudes_exist(store):
    root, norms, _ = store
    dirs = {"train": root / "train", "test": root / "test"}
    cents, meta = fit_cell(root / "train", "down_in", "per_layer", "apc", 4, 0, density=0.5, options={}, **FIT)
    cell = Cell("down_in", "per_layer", "apc", 4, 0.5, 0)
    by_pattern = evaluate_cell(cell, cents.numpy(), meta["layers"], dirs, device="cpu")
    by_weight = evaluate_cell(cell, cents.numpy(), meta["layers"], dirs, weighting="magnitude", device="cpu")
    for a, b in zip(by_pattern, by_weight):
        assert 0 < a["mass_recall"] < 1 and a["groups"] == 1
        # the least-missed-weight oracle is the per-token optimum of the kept |x|: never less mass on any layer
        assert b["mass_recall"] >= a["mass_recall"] - 1e-9
    gate, gmeta = fit_cell(root / "train", "gate", "per_layer", "apc", 4, 0, density=0.5, options={}, **FIT)
    rows = evaluate_cell(Cell("gate", "per_layer", "apc", 4, 0.5, 0), gate.numpy(), gmeta["layers"], dirs, device="cpu")
    assert all("mass_recall" not in r for r in rows)  # no magnitudes stored for gate

    pq, pmeta = fit_cell(root / "train", "down_in", "per_layer", "apc_product", 4, 0, density=0.5,
                         options=OPTIONS["apc_product"], **FIT)
    rows = evaluate_cell(Cell("down_in", "per_layer", "apc_product", 4, 0.5, 0), pq.numpy(), pmeta["layers"], dirs,
                         groups=pmeta["product_groups"], device="cpu")
    for r in rows:  # one mask per token: a centroid of each group, together the capped density
        assert r["groups"] == 2 and r["k"] == 4 and r["centroid_density"] == pytest.approx(0.5)
    out, ometa = fit_cell(root / "train", "down_in", "per_layer", "apc_wout", 4, 0, density=0.5,
                          options=OPTIONS["apc_wout"], column_norms=norms, **FIT)
    rows = evaluate_cell(Cell("down_in", "per_layer", "apc_wout", 4, 0.5, 0), out.numpy(), ometa["layers"], dirs,
                         weighting="output", column_norms=norms, device="cpu")
    assert all(0 < r["mass_recall"] < 1 for r in rows)
    with pytest.raises(ValueError, match="column_norms"):
        evaluate_cell(Cell("down_in", "per_layer", "apc_wout", 4, 0.5, 0), out.numpy(), ometa["layers"], dirs,
                      weighting="output", device="cpu")


def test_score_cell_product_random_control_uses_the_mask_density(store, tiny_llama_module):
    root, _, th = store
    pq, meta = fit_cell(root / "train", "down_in", "per_layer", "apc_product", 4, 0, density=0.5,
                        options=OPTIONS["apc_product"], **FIT)
    windows = torch.randint(1, 128, (2, 17), generator=torch.Generator().manual_seed(9))
    windows[:, 0] = 1  # BOS
    thresholds = {"down_in": [r["threshold"] for r in th["projections"]["down_in"]]}
    out = score_cell(tiny_llama_module, windows, ["centroid_only", "random"], bos=True, projections=["down_in"],
                     thresholds=thresholds, centroids={"down_in": pq}, seed=0, groups={"down_in": 2},
                     assign_weights={})
    assert out["centroid_only"]["kept"]["down_in"] == pytest.approx(0.5)
    assert out["random"]["density"]["down_in"] == pytest.approx(0.5)
    only = score_cell(tiny_llama_module, windows, ["random"], bos=True, projections=["down_in"],
                      thresholds=thresholds, centroids={"down_in": pq}, seed=0, groups={"down_in": 2})
    assert only["random"]["density"]["down_in"] == pytest.approx(0.5)  # without centroid_only: G x the row mean


def test_ratios_to_sparse_pair_the_tokens_of_each_cell(tmp_path):
    from apc.common.atomic import read_json
    from apc.perplexity.intervals import ppl_ratio
    from apc.results.ratios import best_per_method, ratios_to_sparse
    from fake_results import build_fake_results

    fake = build_fake_results(tmp_path)
    table = ratios_to_sparse(fake["config"], "down_in")
    sparse = read_json(tmp_path / "ppl" / "sparse-down_in.json")
    assert len(table) == len([1 for p, *_ in fake["ppl_cells"] if p == "down_in"])
    for _, row in table.iterrows():
        d = read_json(tmp_path / "ppl" / "down_in" / row["scope"] / f"{row['method']}-k{row['k']}-d0.6-s0.json")
        m = d["modes"]["centroid_only"]
        want = ppl_ratio(m["token_nll"], sparse["token_nll"], block=32)
        assert (row["ratio_sparse"], row["ratio_sparse_lo"], row["ratio_sparse_hi"]) == pytest.approx(want)
        assert row["ppl"] == m["ppl"] and row["groups"] == 1
    best = best_per_method(table, max_share=1.0)
    assert list(best["ppl"]) == [table[table["method"] == m]["ppl"].min() for m in best["method"]]


def test_perplexity_batches_chunk_each_set_and_find_a_cells_batch(tmp_path):
    from apc.common.sweep import perplexity_batch_of, perplexity_batches

    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    for size, want in ((2, {"paper": [2, 1], "down_in": [2]}), (None, {"paper": [3], "down_in": [2]}),
                       (1, {"paper": [1] * 3, "down_in": [1] * 2})):
        c = resolve({**raw, "outdir": str(tmp_path / "res"), "perplexity": {"batch_cells": size}}, root=ROOT)
        batches = perplexity_batches(c)
        assert {p: [len(cells) for q, _, cells in batches if q == p] for p in want} == want
        flat = [(p, cell.group) for p, _, cells in batches for cell in cells]
        assert flat == [(p, cell.group) for p, cell in perplexity_cells(c)]  # every cell once, in order
        for p, batch, cells in batches:
            assert all(perplexity_batch_of(batches, p, cell) == batch for cell in cells)
    with pytest.raises(KeyError, match="not a perplexity cell"):
        perplexity_batch_of(batches, "paper", Cell("", "per_layer", "apc", 999, 0.6, 0))
    # one cell per batch: a new cell in the sweep leaves every other cell's batch (id and contents) as it was
    ppl = {"batch_cells": 1, "cells": "all", "psets": {"gate": ["gate"]}}
    grown = resolve({**raw, "outdir": str(tmp_path / "res"), "perplexity": ppl}, root=ROOT)
    more = resolve({**raw, "outdir": str(tmp_path / "res"), "perplexity": ppl, "cluster": {"k": [8, 16, 128]}}, root=ROOT)
    before = {b: [x.group for x in cells] for _, b, cells in perplexity_batches(grown)}
    after = {b: [x.group for x in cells] for _, b, cells in perplexity_batches(more)}
    assert len(after) > len(before) and all(after.get(b) == g for b, g in before.items())


def test_evaluation_samples_train_apart_from_the_fit_sample(store):
    """eval.max_train_tokens: a seeded sample per layer of train only, drawn apart from the clustering's own sample."""
    from apc.clustering.sources import layer_files, sample_layer
    from apc.evaluation.evaluate import EVAL_SAMPLE_SEED
    from apc.evaluation.metrics import coverage_sums, metrics_from_sums

    root, _, _ = store
    dirs = {"train": root / "train", "test": root / "test"}
    gate, meta = fit_cell(root / "train", "gate", "per_layer", "apc", 4, 0, density=0.5, options={}, **FIT)
    cell = Cell("gate", "per_layer", "apc", 4, 0.5, 0)
    full = evaluate_cell(cell, gate.numpy(), meta["layers"], dirs, device="cpu")
    capped = evaluate_cell(cell, gate.numpy(), meta["layers"], dirs, device="cpu", max_tokens={"train": 7})
    per_layer = [r for r in capped if r["layer"] != "all"]
    assert all(r["n_tokens"] == 7 for r in per_layer if r["split"] == "train")
    assert [r for r in capped if r["split"] == "test"] == [r for r in full if r["split"] == "test"]  # test stays whole
    files = layer_files(root, "train", "gate", meta["layers"])
    for r, layer, f in zip([r for r in per_layer if r["split"] == "train"], meta["layers"], files):
        want = metrics_from_sums(coverage_sums(sample_layer(f, 7, EVAL_SAMPLE_SEED + layer), gate[layer].numpy(),
                                               device="cpu"))
        assert r["recall"] == pytest.approx(want["recall"]) and r["n_tokens"] == want["n_tokens"]
        fit_rows = sample_layer(f, 7, 0 * 1_000_003 + layer).bits()  # the fit sample's seed for cell seed 0
        assert not np.array_equal(sample_layer(f, 7, EVAL_SAMPLE_SEED + layer).bits(), fit_rows)
