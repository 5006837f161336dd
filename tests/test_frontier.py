"""The frontier: lines and points from config, config checks, the pure random mode, point
scoring (compute share = kept + predictor), the table and plot, and MLflow frontier runs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import transformers
import yaml

from apc.common.errors import ConfigError
from apc.common.frontier import Point, frontier_cells
from apc.lines import parse
from apc.lines.plan import frontier_lines, frontier_points, line_cells, line_shares, resolve_config
from apc.common.layout import Cell, Layout
from apc.common.sweep import cluster_cells, grid_cells, perplexity_cells
from apc.perplexity.frontier import score_point
from apc.perplexity.masking import install_interventions
from apc.prediction import ClusterPredictor, NeuronPredictor
from apc.results.frontier import frontier_rows, write_frontier_table
from apc.results.frontier_plots import make_frontier_plots
from apc.results.inputs import sweep_files
from conftest import ROOT

WIDTH, D_MODEL, N_LAYERS = 44, 32, 2


def _config(tmp_path, preset="smoke", **over):
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    return resolve_config({**raw, "preset": preset, "outdir": str(tmp_path / "res"), **over}, root=ROOT)


def lines(config):
    return frontier_lines(config, ["down_in"])


def parse_line(line):
    return parse(line).fields()


def line_cell(line, proj, share):
    spec = parse(line)
    return Cell(proj, spec.scope, spec.method, spec.k, float(share), spec.seed) if spec.is_cluster else None


def test_lines_parse_and_name_their_cells(tmp_path):
    c = _config(tmp_path, preset="frontier")
    ls = lines(c)
    assert ls[:7] == ["threshold-self", "random", "cats", "chess", "teal", "teal-block", "teal-layer-greedy"]
    assert {"scap", "rsparse", "larosa", "griffin", "wina", "teal-block"} <= set(ls)
    assert "predicted-mlp-m2.pooled.apc-k128-s0" in ls and "oracle.pooled.static-k1-s0" in ls
    assert "neuron-mlp-k512-x4" in ls and not any(l.startswith("predicted") and "static" in l for l in ls)
    d = parse_line("predicted-mlp-m2.per_layer.apc-k32-s0")
    assert d == {"family": "predicted", "mode": "predicted", "kind": "mlp", "top_m": 2, "scope": "per_layer",
                 "method": "apc", "k": 32, "seed": 0}
    assert parse_line("neuron-linear-k128-x4") == {"family": "neuron", "mode": "neuron_predicted", "kind": "linear",
                                                   "k": 128, "factor": 4}
    assert line_cell("oracle.pooled.static-k1-s0", "down_in", 0.4) == Cell("down_in", "pooled", "static", 1, 0.4, 0)
    assert line_cell("threshold-self", "down_in", 0.4) is None
    with pytest.raises(ValueError, match="not a frontier line: 'predicted-linear'"):
        parse_line("predicted-linear")
    assert parse_line("experts-analytic.s0.1-e16") == {"family": "experts", "mode": "predicted", "router": "analytic",
                                                       "shared": "0.1", "n": 16}
    points = frontier_points(c)
    n_experts = len(c["experts"]["cells"]) * len(c["experts"]["routers"])
    assert n_experts >= 1 and sum(p.line.startswith("experts-") for p in points) == n_experts * 3
    assert len(points) == len(ls) * 3 and len(set(points)) == len(points)  # the experts lines among them
    assert Point("down_in", "threshold-self", 0.6).key == "frontier/down_in/threshold-self/0.6"


def test_frontier_cells_join_the_clustering_sweep_but_not_the_perplexity_cells(tmp_path):
    c = _config(tmp_path, preset="default")
    fc = frontier_cells(c)
    assert {(x.method, x.k, x.density) for x in fc} == {(m, k, d) for m, k in (("apc", 128), ("static", 1))
                                                       for d in (0.4, 0.6, 0.8)}
    assert all(x.proj == "down_in" and x.scope == "per_layer" for x in fc)
    cells = cluster_cells(c)
    assert set(fc) <= set(cells) and len(cells) == len(set(cells)) == len(set(grid_cells(c)) | set(fc))
    assert {pc.group for _, pc in perplexity_cells(c)} <= {x.group for x in grid_cells(c)}
    off = _config(tmp_path, preset="default", frontier={"pset": {}})
    f = sweep_files(off)
    assert not f.points and not f.frontier and not f.frontier_table and cluster_cells(off) == grid_cells(off)


@pytest.mark.parametrize("over,message", [
    ({"predict": {"kinds": ["tree"]}}, "config key 'predict.kinds.0'"),
    ({"predict": {"top_m": [1, 9]}}, "config key 'predict.top_m': [9] exceed K=8"),
    ({"frontier": {"pset": {"x": ["up"]}}, "extract": {"projections": ["gate", "down_in"]}},
     "config key 'frontier.pset.x': projections ['up'] are not extracted"),
    ({"frontier": {"cells": [{"method": "static", "k": 1, "scope": "pooled"}]}}, "has a fixed K"),
    ({"frontier": {"cells": []}}, "config key 'frontier.cells': needs at least one"),
    ({"frontier": {"test_tokens": 64}}, "config key 'frontier.test_tokens': budget 64"),
    ({"cluster": {"layers": [0, 1]}}, "per_layer cells need cluster.layers: all"),
    ({"frontier": {"cells": [{"method": "apc", "k": 8, "scope": "per_layer", "allocation": "even"}]}},
     "config key 'frontier.cells.0.allocation': 'even' is not one of"),
    ({"frontier": {"lines": {"teal": {"allocation": ["even"]}}}}, "config key 'frontier.lines.teal'"),
    ({"frontier": {"cells": [{"method": "apc", "k": 8, "scope": "pooled", "allocation": "layer-greedy"}]}},
     "allocation 'layer-greedy' allocates per layer"),
    ({"frontier": {"cells": [{"method": "apc", "k": 8, "scope": "per_layer", "allocation": "greedy"}]}},
     "config key 'frontier.cells': allocation 'greedy' is now called 'layer-greedy'"),
    ({"frontier": {"lines": {"teal": {"allocation": ["uniform", "greedy"]}}}},
     "config key 'frontier.lines.teal.allocation': 'greedy' is now called 'layer-greedy'"),
    ({"frontier": {"lines": {"griffin": {"prompt": 128}}}},
     "config key 'frontier.lines.griffin.prompt': 128 positions leave no token"),
    ({"frontier": {"lines": {"teal": {"allocaton": ["uniform"]}}}}, "config key 'frontier.lines.teal'"),
    ({"frontier": {"kept_shares": [0.6, 1.2]}}, "config key 'frontier.kept_shares.1': 1.2 is greater than the maximum of 1"),
    ({"frontier": {"kept_shares": [0.0]}}, "config key 'frontier.kept_shares.0': 0.0 is less than or equal to the minimum of 0"),
    ({"frontier": {"pset": {"g": ["gate"]}}},
     "config key 'frontier.lines': cats, chess, teal, wina, rsparse, griffin mask the down_proj input"),
    ({"frontier": {"lines": {"median": {}}}}, "config key 'frontier.lines.median': unknown key (allowed here: threshold, random, cats"),
    ({"frontier": {"batch_sizes": [0]}}, "config key 'frontier.batch_sizes.0'"),
])
def test_bad_frontier_configs(tmp_path, over, message):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, **over)
    assert message in str(err.value)


def test_cats_on_a_model_without_a_gate_stops_at_config_time(tmp_path):
    folder = tmp_path / "opt"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "opt"}))
    plain = dict(model={"name_or_path": str(folder)}, extract={"projections": ["down_in"], "magnitudes": []},
                 cluster={"projections": ["down_in"], "cells": []}, perplexity={"psets": {"down_in": ["down_in"]}})
    with pytest.raises(ConfigError, match=r"config key 'frontier.lines': cats, chess, teal, wina, rsparse, griffin need "
                                          r"a Llama-style gated FFN, and model .* \(opt\) has no gate; turn them off"):
        _config(tmp_path, **plain)
    off = {f: False for f in ("cats", "chess", "wina", "rsparse", "griffin")}
    with pytest.raises(ConfigError, match=r"'frontier.lines': teal need a Llama-style gated FFN"):
        _config(tmp_path, **{**plain, "frontier": {"lines": off}})
    c = _config(tmp_path, **{**plain, "frontier": {"lines": {**off, "teal": False}}})
    assert "cats" not in lines(c) and "threshold-self" in lines(c) and "random" in lines(c)


def test_cats_is_placed_at_the_frontiers_compute_shares(tmp_path):
    from apc.lines.cats import cats_share

    c = _config(tmp_path, preset="default")
    assert line_shares(c, "cats") == [pytest.approx(0.1), pytest.approx(0.4), pytest.approx(0.7)]
    assert [(1 + 2 * r) / 3 for r in line_shares(c, "cats")] == pytest.approx(c["frontier"]["kept_shares"])
    assert cats_share(0.3) is None and line_shares(c, "teal") == c["frontier"]["kept_shares"]
    g = _config(tmp_path, preset="frontier")
    assert "teal-layer-greedy" in lines(g) and "oracle.per_layer.apc_layer_greedy-k128-s0" in lines(g)
    assert {"teal-block", "wina", "larosa", "griffin"} <= set(lines(g)) and "larosa" not in lines(c)
    assert g["cluster"]["options"]["apc_layer_greedy"] == {**g["cluster"]["options"]["apc"], "method": "apc",
                                                           "allocation": "layer-greedy"}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=D_MODEL, intermediate_size=WIDTH,
                                   num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2)
    return transformers.LlamaForCausalLM(cfg).eval()


def _windows(n=3, s=24):
    w = torch.randint(2, 128, (n, s), generator=torch.Generator().manual_seed(3))
    w[:, 0] = 1
    return w


def test_random_only_is_a_pure_random_mask_of_the_share(model):
    windows = _windows()
    zero = {"down_in": [0.0] * N_LAYERS}  # every neuron "active": the random mode would keep r & p = r
    high = {"down_in": [1e9] * N_LAYERS}  # nothing active: random keeps nothing, random_only still r
    for thr in (zero, high):
        with install_interventions(model, "random_only", projections=["down_in"], thresholds=thr,
                                   random_density={"down_in": 0.5}, skip_first_position=True) as h:
            model(windows)
        assert h.kept_fraction()["down_in"] == pytest.approx(round(0.5 * WIDTH) / WIDTH)
    with install_interventions(model, "random", projections=["down_in"], thresholds=high,
                               random_density={"down_in": 0.5}, skip_first_position=True) as h:
        model(windows)
    assert h.kept_fraction()["down_in"] == 0.0


def test_score_point_spends_kept_share_plus_predictor_flops(model):
    windows, thr = _windows(), {"down_in": [0.05] * N_LAYERS}
    cents = torch.zeros(N_LAYERS, 4, WIDTH, dtype=torch.bool)
    cents[:, :, :22] = True
    preds = [ClusterPredictor(D_MODEL, 4) for _ in range(N_LAYERS)]
    share = preds[0].flops_per_token() / (6 * D_MODEL * WIDTH)
    r = score_point(model, windows, "predicted-linear-m1.per_layer.apc-k4-s0", 0.5, bos=True,
                    projections=["down_in"], thresholds=thr, centroids={"down_in": cents},
                    predictors={"down_in": preds}, predictor_share={"down_in": share})
    assert r["mode"] == "predicted" and r["kept_share"] == pytest.approx(0.5)
    assert r["compute_share"] == pytest.approx(0.5 + share) and r["predictor_flops_share"] == share
    o = score_point(model, windows, "oracle.per_layer.apc-k4-s0", 0.5, bos=True, projections=["down_in"],
                    thresholds=thr, centroids={"down_in": cents})
    assert o["ppl"] == pytest.approx(r["ppl"], rel=1e-6)  # identical centroids: any id gives the same mask
    assert o["compute_share"] == pytest.approx(0.5)
    # a neuron predictor of the wrong width is one clear error
    bad = [NeuronPredictor(D_MODEL + 1, WIDTH, 2) for _ in range(N_LAYERS)]
    with pytest.raises(ValueError, match="width"):
        score_point(model, windows, "neuron-linear-k4-x1", 0.5, bos=True, projections=["down_in"], thresholds=thr,
                    predictors={"down_in": bad})


def _point(path: Path, line, share, ppl_nll, kept, pshare, cells=None):
    sums, tokens = [ppl_nll * 23, (ppl_nll + 0.1) * 23], [23, 23]
    ppl = float(np.exp(sum(sums) / sum(tokens)))
    d = {"pset": "down_in", "projections": ["down_in"], "line": line, "family": parse_line(line)["family"],
         "mode": parse_line(line)["mode"], "share": share, "ppl": ppl, "ppl_lo": ppl * 0.9, "ppl_hi": ppl * 1.1,
         "tokens": 46, "windows": 2, "window_nll_sum": sums, "window_tokens": tokens, "kept_share": kept,
         "token_nll": [ppl_nll] * 23 + [ppl_nll + 0.1] * 23, "block_tokens": 32, "units": 1,
         "kl": 0.3 * (1 - share), "kl_lo": float("nan"), "kl_hi": float("nan"), "top1": share, "top1_lo": float("nan"),
         "top1_hi": float("nan"), "kl_reference": "exact",
         "predictor_flops_share": pshare, "compute_share": kept + pshare, "cells": cells or {},
         "started_at": 1.7e9, "finished_at": 1.7e9 + 3}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d))
    return d


def _fake_frontier(tmp_path, shares=(0.4, 0.6, 0.8)):
    cfg = _config(tmp_path)
    cfg["frontier"]["kept_shares"] = list(shares)
    lay, files = Layout(cfg["outdir"]), sweep_files(cfg)
    dense = {"mode": "dense", "ppl": float(np.exp(2.0)), "window_nll_sum": [46.0, 46.0], "window_tokens": [23, 23],
             "ppl_lo": 7.0, "ppl_hi": 8.0, "token_nll": [2.0] * 46}
    Path(lay.ppl_dense()).parent.mkdir(parents=True, exist_ok=True)
    Path(lay.ppl_dense()).write_text(json.dumps(dense))
    Path(lay.ppl_sparse("down_in")).write_text(json.dumps({**dense, "mode": "sparse", "pset": "down_in",
                                                           "kept": {"down_in": 0.5}}))
    for i, p in enumerate(files.points):
        cell = line_cell(p.line, "down_in", p.share)
        _point(Path(lay.frontier_point(p.pset, p.line, p.share)), p.line, p.share, 2.5 + 0.1 * i, p.share,
               0.01 if p.line.startswith(("predicted", "neuron")) else 0.0, {"down_in": cell.key} if cell else None)
    return cfg, files


def test_frontier_table_and_plot_read_exactly_their_points(tmp_path):
    cfg, files = _fake_frontier(tmp_path)
    stray = Path(Layout(cfg["outdir"]).frontier_point("down_in", "threshold-self", 0.55))
    _point(stray, "threshold-self", 0.55, 9.0, 0.55, 0.0)  # not in the config: never read
    df = write_frontier_table(Path(cfg["outdir"]) / "frontier.csv", files.frontier, files.frontier_refs)
    assert len(df) == len(files.points) and 0.55 not in set(df["share"])
    assert np.allclose(df["compute_share"], df["kept_share"] + df["predictor_flops_share"])
    first = json.loads(Path(files.frontier[0]).read_text())
    assert df.iloc[0]["ratio"] == pytest.approx(first["ppl"] / np.exp(2.0))
    oracle = df[df["line"] == "oracle.per_layer.apc-k8-s0"].iloc[0]
    assert oracle["cells"] == f"down_in=down_in/per_layer/apc-k8-d{oracle['share']:g}-s0"
    # 46 tokens are one block of 32: no interval (NaN), never a fake one
    assert df["ratio_lo"].isna().all() and df["kl_lo"].isna().all() and (df["units"] == 1).all()
    assert np.allclose(df["kl"], 0.3 * (1 - df["share"])) and (df["kl_reference"] == "exact").all()
    pngs = make_frontier_plots(tmp_path / "plots", Path(cfg["outdir"]) / "frontier.csv", files.frontier_refs)
    assert [p.name for p in pngs][:2] == ["frontier_down_in.png", "frontier_kl_down_in.png"]
    assert all(p.stat().st_size > 5000 for p in pngs[:2])
    assert frontier_rows([], files.frontier_refs).empty
    # a GRIFFIN point's ratio is to dense on its own tokens (those after the prompt), which it carries
    path = next(f for f, p in zip(files.frontier, files.points) if p.line == "griffin")
    g = json.loads(Path(path).read_text())
    Path(path).write_text(json.dumps({**g, "dense": {"window_nll_sum": [23.0, 23.0], "window_tokens": [23, 23]}}))
    row = frontier_rows([path], files.frontier_refs).iloc[0]
    assert row["ratio"] == pytest.approx(g["ppl"] / np.exp(1.0))


def test_crossings_read_the_ratio_and_the_kl_levels():
    from apc.results.frontier import crossings

    nan = float("nan")
    table = pd.DataFrame({"pset": "down_in", "line": ["a"] * 3 + ["b"] * 2, "family": "teal",
                          "compute_share": [0.4, 0.6, 0.8, 0.4, 0.8], "ratio": [1.5, 1.2, 1.04, 2.0, 1.9],
                          "ratio_lo": [1.4, 1.1, 1.0, 1.9, 1.8], "ratio_hi": [nan] * 5,
                          "kl": [0.5, 0.1, 0.02, 0.9, 0.3], "kl_lo": [0.4, 0.05, 0.01, 0.8, 0.25],
                          "kl_hi": [0.6, 0.15, 0.03, 1.0, 0.35]})
    c = crossings(table).set_index("line")
    assert c.loc["a", "share_kl0.2"] == pytest.approx(0.4 + 0.2 * 0.3 / 0.4)
    assert c.loc["a", "share_kl0.05"] == pytest.approx(0.6 + 0.2 * 0.05 / 0.08)
    assert c.loc["a", "share_kl0.05_lo"] == pytest.approx(0.6) and c.loc["a", "share_kl0.2_hi"] > c.loc["a", "share_kl0.2"]
    assert np.isnan(c.loc["b", "share_kl0.2"]) and np.isnan(c.loc["b", "share_kl0.05"])  # never reached: n/a
    assert c.loc["a", "share_1.25"] == pytest.approx(0.4 + 0.2 * 0.25 / 0.3) and np.isnan(c.loc["a", "share_1.25_hi"])


def test_the_decision_table_is_written_beside_the_frontier_and_reads_back(tmp_path):
    from apc.results.frontier import crossings, write_decision_table

    table = pd.DataFrame({"pset": "down_in", "line": ["a", "a"], "family": "teal", "compute_share": [0.4, 0.8],
                          "ratio": [1.5, 1.0], "kl": [0.5, 0.01]})
    path = tmp_path / "frontier_decision.csv"
    write_decision_table(path, table)
    back = pd.read_csv(path).set_index("line")
    assert back.loc["a", "share_kl0.2"] == pytest.approx(0.4 + 0.4 * 0.3 / 0.49)
    assert back.loc["a", "share_1.05"] == pytest.approx(crossings(table).set_index("line").loc["a", "share_1.05"])
    assert np.isnan(back.loc["a", "share_1.05_lo"])  # the table carries no interval: its bounds reach nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frontier_decision.csv"]  # written atomically, no temporary left


def test_mlflow_frontier_runs_are_replaced_and_retired(tmp_path):
    pytest.importorskip("mlflow")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    from apc.results.tracking import default_tracking_uri, sync_results

    cfg, files = _fake_frontier(tmp_path)
    uri = default_tracking_uri(tmp_path / "store")
    git = {"commit": "0" * 40, "dirty": False}

    def frontier_runs(view=ViewType.ACTIVE_ONLY):
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("t")
        runs = client.search_runs([exp.experiment_id], "tags.`apc.kind` = 'frontier'", run_view_type=view)
        return {r.data.tags["apc.cell_key"]: r for r in runs}

    first = sync_results(cfg, tracking_uri=uri, experiment="t", git_info=git)
    assert first["frontier"] == len(files.points)
    runs = frontier_runs()
    assert set(runs) == {p.key for p in files.points}
    key = "frontier/down_in/oracle.per_layer.apc-k8-s0/0.6"
    assert runs[key].data.tags["apc.frontier_cells"] == "down_in=down_in/per_layer/apc-k8-d0.6-s0"
    assert runs[key].data.tags["mlflow.parentRunId"] == first["parent"]
    metrics = runs[key].data.metrics
    assert metrics["kl"] == pytest.approx(0.3 * 0.4) and metrics["top1"] == 0.6 and metrics["units"] == 1
    assert "kl_lo" not in metrics and "ratio_lo" not in metrics  # no interval: no metric, never a fake one
    smaller = {**cfg, "frontier": {**cfg["frontier"], "kept_shares": [0.6]}}
    shrunk = sync_results(smaller, tracking_uri=uri, experiment="t", git_info=git)
    gone_cells = len(cluster_cells(cfg)) - len(cluster_cells(smaller))  # the frontier's cells at 0.4 and 0.8
    gone_points = len({p.key for p in files.points} - {p.key for p in frontier_points(smaller)})
    assert gone_points >= len(files.points) // 2  # the lines at the frontier's shares lose 0.4 and 0.8
    assert gone_cells == 4 and shrunk["retired"] == gone_points + gone_cells
    assert shrunk["created"] == 0 and len(frontier_runs(ViewType.DELETED_ONLY)) == gone_points
    assert set(frontier_runs()) == {p.key for p in frontier_points(smaller)}
    # a changed point replaces its run; the others stay
    p = Path(Layout(cfg["outdir"]).frontier_point("down_in", "threshold-self", 0.6))
    _point(p, "threshold-self", 0.6, 4.0, 0.6, 0.0)
    before = frontier_runs()
    changed = sync_results(smaller, tracking_uri=uri, experiment="t", git_info=git)
    assert (changed["updated"], changed["created"]) == (1, 0)
    after = frontier_runs()
    tkey = "frontier/down_in/threshold-self/0.6"
    assert after[tkey].info.run_id != before[tkey].info.run_id
    assert {k: r.info.run_id for k, r in after.items() if k != tkey} == \
        {k: r.info.run_id for k, r in before.items() if k != tkey}
