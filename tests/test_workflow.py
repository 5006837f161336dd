"""End to end: the whole DAG through Snakemake on the `smoke` preset (real embedded model, tiny budget)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from apc.common.layout import Cell, Layout
from apc.lines import parse
from apc.extraction.patterns import PatternReader
from conftest import ROOT, After, DagRun, copy_results, install_plugin, snakemake, start_early, started, started_if_any

pytestmark = pytest.mark.slow
PROJS = ["gate", "up", "down", "down_in"]


#: the smoke run also puts the out-of-tree line of the plugin fixture on its frontier (tests/lines/test_plugin.py)
PLUGIN_LINE = "frontier={lines: {topk: {}}}"


@start_early("smoke", critical=True)
def start_smoke(tmp_path_factory, items):
    out = tmp_path_factory.mktemp("wf") / "smoke"
    install_plugin(tmp_path_factory.mktemp("plugin"))  # on the path of every later run of the session
    return out, DagRun(*cfg(out))


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """The whole smoke DAG, run once per session (started with the session: conftest.start_early); the tests
    that change its results wait until the magnitude cells' copy of them is taken, if one is."""
    out, run = started("smoke", tmp_path_factory)
    run.result()
    if magnitude := started_if_any("smoke_magnitude"):
        magnitude[1].prepared.wait()
    return out


def cfg(out):
    return ["--config", "preset=smoke", f"outdir={out}", PLUGIN_LINE]


MAGNITUDE_CELLS = [
    "cluster={cells: [{projection: down_in, scope: per_layer, method: apc_wout, k: 8},"
    " {projection: down_in, scope: per_layer, method: apc_product, k: 4}]}",
    "perplexity={psets: {gate: [gate], down_in: [down_in]},"
    " cells: [{method: apc_wout, k: 8, scope: per_layer}, {method: apc_product, k: 4, scope: per_layer}]}",
]


@start_early("smoke_magnitude")
def start_smoke_magnitude(tmp_path_factory, items):
    """The smoke sweep with the weighted and product cells of down_in, on a copy of the smoke results (and
    of their MLflow store) made once the smoke DAG is done: only the new cells' jobs and the aggregations run,
    in the background, beside the tests that read the smoke results."""
    src, run = started("smoke", tmp_path_factory)
    out = tmp_path_factory.mktemp("wf-magnitude") / "smoke"
    return out, After(run, lambda: copy_results(src.parent, out.parent, out.name),
                      lambda: DagRun(*cfg(out), *MAGNITUDE_CELLS).result())


@pytest.fixture(scope="session")
def smoke_magnitude(tmp_path_factory):
    """The smoke results with the extra magnitude cells (:func:`start_smoke_magnitude`)."""
    out, run = started("smoke_magnitude", tmp_path_factory)
    run.result()
    return out


def test_thresholds_hit_target_sparsity_on_every_layer_and_projection(smoke):
    th = json.loads((smoke / "thresholds.json").read_text())
    assert sorted(th["projections"]) == sorted(PROJS)
    for proj, rows in th["projections"].items():
        assert [r["layer"] for r in rows] == list(range(30))
        for r in rows:
            assert abs(r["achieved_sparsity"] - 0.5) <= 0.01, (proj, r)
    # the stored train patterns agree: density = 1 - achieved sparsity, exactly the same tokens
    for proj in PROJS:
        for layer in (0, 29):
            meta = PatternReader(smoke / "patterns" / "train" / proj / f"L{layer:02d}.npy").meta
            achieved = th["projections"][proj][layer]["achieved_sparsity"]
            assert abs((1 - meta["density"]) - achieved) < 1e-9


def test_pattern_store_is_complete_bit_packed_and_matches_tokens(smoke):
    for split in ("train", "test"):
        tokens = np.load(smoke / "tokens" / f"{split}.npy")
        tmeta = json.loads((smoke / "tokens" / f"{split}.json").read_text())
        assert tokens.shape == (tmeta["n_windows"], 128) and (tokens[:, 0] == tmeta["bos_token_id"]).all()
        summary = json.loads((smoke / "patterns" / split / "extract.json").read_text())
        assert summary["n_tokens"] == tmeta["n_text_tokens"] == tokens.shape[0] * 127
        assert summary["store_bytes"] < 1.01 * summary["ideal_bytes"]
        for proj in PROJS:
            files = sorted((smoke / "patterns" / split / proj).glob("L*.npy"))
            assert len(files) == 30
            r = PatternReader(files[3])
            width = 576 if proj == "down" else 1536
            assert r.width == width and r.packed().shape == (summary["n_tokens"], width // 8)
            assert r.meta["split"] == split and r.meta["projection"] == proj and r.meta["layer"] == 3


def test_train_and_test_windows_come_from_disjoint_articles(smoke):
    train = json.loads((smoke / "tokens" / "train.json").read_text())["articles"]
    test = json.loads((smoke / "tokens" / "test.json").read_text())["articles"]
    assert train and test and not set(train) & set(test)


def test_dry_run_after_a_full_run_has_nothing_to_do(smoke):
    res = snakemake("-n", *cfg(smoke))
    assert "Nothing to be done" in res.stdout + res.stderr


def job_stats(text: str) -> dict[str, int]:
    """``{rule: jobs}`` of a dry run's job-stats table."""
    import re

    block = text.split("Job stats:", 1)[1].split("Reasons:", 1)[0] if "Job stats:" in text else ""
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", block, re.M) if m[1] != "total"}


def test_adding_a_line_reruns_no_other_job(smoke):
    res = snakemake("-n", "--config", "preset=smoke", f"outdir={smoke}", "frontier={lines: {topk: {}, scap: {}}}")
    jobs = job_stats(res.stdout + res.stderr)
    assert jobs.get("calibrate_line") == 1 and jobs.get("frontier_line") == 1, jobs  # scap's own, nothing else's
    assert set(jobs) <= {"calibrate_line", "frontier_line", "frontier_table", "plots", "track", "summary", "resolved_config",
                         "all"}, jobs


def test_bad_config_stops_with_one_clear_message(tmp_path):
    sparsity = DagRun("-n", "--config", "preset=smoke", f"outdir={tmp_path}", "extract={sparsity: 1.5}")
    unknown = DagRun("-n", "--config", "preset=smoke", "clustr={k: [2]}")  # both dry runs side by side
    res = sparsity.result(check=False)
    assert res.returncode != 0
    assert "config key 'extract.sparsity'" in res.stdout + res.stderr
    res = unknown.result(check=False)
    assert res.returncode != 0 and "config key 'clustr': unknown key" in res.stdout + res.stderr


def smoke_cells(out):
    import yaml

    from apc.common.sweep import cluster_cells, perplexity_cells
    from apc.lines.plan import resolve_config

    over = yaml.safe_load(PLUGIN_LINE.split("=", 1)[1])  # the run's plugin line (registered: conftest.install_plugin)
    c = resolve_config({**yaml.safe_load((ROOT / "config.yaml").read_text()), "preset": "smoke", "outdir": str(out),
                        "frontier": over}, root=ROOT)
    return c, cluster_cells(c), perplexity_cells(c)


def test_every_cell_has_centroids_and_train_test_tables(smoke):
    c, cells, _ = smoke_cells(smoke)
    lay = Layout(smoke)
    assert {x.method for x in cells} == {"apc", "kmeans", "random", "static"}
    for cell in cells:
        meta = json.loads(Path(lay.centroids_meta(cell)).read_text())
        n_sets = 30 if cell.scope == "per_layer" else 1
        assert meta["n_sets"] == n_sets and meta["k"] == cell.k and meta["layers"] == list(range(30))
        if cell.method in ("apc", "kmeans"):
            assert meta["history"] and meta["iterations"] >= 1
        if cell.method in ("apc", "random", "static"):  # density-capped methods
            assert abs(meta["density"] - c["cluster"]["density"]) < 1e-3
        table = pd.read_csv(lay.eval_table(cell), dtype={"layer": str})
        assert set(table["split"]) == {"train", "test"}
        for split, rows in table.groupby("split"):
            assert len(rows) == 31 and (rows["layer"] == "all").sum() == 1  # 30 layers + the total
            total = rows[rows["layer"] == "all"].iloc[0]
            per = rows[rows["layer"] != "all"]
            # the total is the token-weighted combination of the per-layer rows
            assert total["recall"] == pytest.approx((per["recall"] * per["data_density"]).sum() / per["data_density"].sum())
            assert (table["paper_precision"] == table["recall"]).all()
            assert (table["random_recall"] == table["centroid_density"]).all()


def test_apc_beats_the_random_control_on_held_out_tokens(smoke):
    s = pd.read_csv(smoke / "summary.csv")
    test = s[(s["split"] == "test")].set_index(["projection", "scope", "method", "k"])
    for proj in ("gate", "down_in"):
        for scope in ("per_layer", "pooled"):
            apc, rnd = test.loc[(proj, scope, "apc", 8)], test.loc[(proj, scope, "random", 8)]
            assert apc["centroid_density"] == pytest.approx(rnd["centroid_density"], abs=1e-3)
            assert apc["recall"] > rnd["recall"] + 0.01


def test_perplexity_results(smoke):
    c, _, pcells = smoke_cells(smoke)
    dense = json.loads((smoke / "ppl" / "dense.json").read_text())
    assert dense["windows"] == 2 and dense["tokens"] == 2 * 127 and np.isfinite(dense["ppl"])
    sparse = json.loads((smoke / "ppl" / "sparse-gate.json").read_text())
    assert abs(sparse["kept"]["gate"] - 0.5) < 0.05 and sparse["tokens"] == dense["tokens"]
    assert len(dense["token_nll"]) == dense["tokens"] and "kl" not in dense and sparse["kl"] > 0
    with np.load(smoke / "ppl" / "dense-reference.npz") as ref:  # the dense log-probs every masked job reads
        assert ref["logprobs"].shape == (dense["tokens"], 49152) and ref["ids"].shape == (dense["tokens"], 0)
    assert len(pcells) == 2 * 4  # both scopes x (apc, kmeans, random at K=8 + static)
    for pset, cell in pcells:
        r = json.loads(Path(Layout(smoke).ppl_cell(pset, cell)).read_text())
        assert set(r["modes"]) == {"centroid", "centroid_only", "random"}
        for mode in r["modes"].values():
            assert np.isfinite(mode["ppl"]) and mode["tokens"] == dense["tokens"]
            # 254 tokens are 7 blocks of 32: fewer than 20, so no interval (NaN), never a fake one
            assert mode["units"] == 7 and np.isnan(mode["ppl_lo"]) and np.isnan(mode["kl_hi"])
            assert len(mode["window_nll_sum"]) == mode["windows"] == 2 and sum(mode["window_tokens"]) == mode["tokens"]
            assert len(mode["token_nll"]) == len(mode["token_kl"]) == len(mode["token_top1"]) == mode["tokens"]
            assert mode["kl"] > 0 and 0 < mode["top1"] < 1 and mode["kl_reference"] == "exact"
        only = r["modes"]["centroid_only"]["kept"]["gate"]
        if cell.method != "kmeans":  # density-capped: every centroid, hence every mask, has the same density
            assert only == pytest.approx(r["centroid_density"]["gate"], abs=1e-9)
        # the random control uses the density of the masks actually applied
        assert r["modes"]["random"]["density"]["gate"] == pytest.approx(only)
        # the oracle keeps the overlap of centroid and true mask, less than the centroid alone
        assert r["modes"]["centroid"]["kept"]["gate"] < r["modes"]["centroid_only"]["kept"]["gate"]
        assert r["modes"]["random"]["ppl"] > dense["ppl"]


def _mlflow(out):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    info = json.loads((out / "mlflow_runs.json").read_text())
    client = MlflowClient(info["tracking_uri"])
    runs = client.search_runs([info["experiment_id"]], f"tags.`apc.study` = '{info['study']}'",
                              run_view_type=ViewType.ACTIVE_ONLY, max_results=5000)
    cells = {}
    for r in runs:
        if r.data.tags["apc.kind"] == "cell":
            key = r.data.tags["apc.cell_key"]
            assert key not in cells, f"two active runs for {key}"
            cells[key] = r
    return info, [r for r in runs if r.data.tags["apc.kind"] == "study"], cells


def test_mlflow_one_run_per_cell_summary_plots_and_report(smoke, tmp_path):
    _, cells, _ = smoke_cells(smoke)
    info, studies, runs = _mlflow(smoke)
    assert len(studies) == 1 and studies[0].info.run_id == info["parent"]
    assert studies[0].info.run_name == "smoke · embedded:smollm2 · embedded-wikipedia"
    assert set(runs) == {c.key for c in cells} and info["cells"] == len(cells)
    run = runs["gate/pooled/apc-k8-d0.6-s0"]
    table = pd.read_csv(Layout(smoke).eval_table(Cell("gate", "pooled", "apc", 8, 0.6, 0)), dtype={"layer": str})
    want = table[(table["layer"] == "all") & (table["split"] == "test")].iloc[0]
    assert run.data.metrics["test_recall"] == pytest.approx(want["recall"])
    assert run.data.metrics["k"] == 8.0
    ppl = json.loads(Path(Layout(smoke).ppl_cell("gate", Cell("", "pooled", "apc", 8, 0.6, 0))).read_text())
    assert run.data.metrics["ppl_gate_centroid_only"] == pytest.approx(ppl["modes"]["centroid_only"]["ppl"])
    assert "ratio_gate_centroid_only" in run.data.metrics  # recall and perplexity side by side
    assert "ratio_gate_centroid_only_lo" not in run.data.metrics  # 7 blocks: no interval, no metric
    assert run.data.metrics["kl_gate_centroid_only"] == pytest.approx(ppl["modes"]["centroid_only"]["kl"])

    summary = pd.read_csv(smoke / "summary.csv")
    assert len(summary) == 2 * len(cells)
    pngs = sorted((smoke / "plots").glob("*.png"))
    assert {"recall_vs_k.png", "precision_vs_k.png", "ppl_gate.png"} <= {p.name for p in pngs}
    for p in pngs:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 1000

    report = tmp_path / "report.html"
    snakemake("--report", str(report), *cfg(smoke))
    html = report.read_text(errors="ignore")
    assert report.stat().st_size > 10_000 and "summary.csv" in html and "recall_vs_k.png" in html


def test_sweep_extend_shrink_rerun_keeps_mlflow_and_summary_exact(smoke):
    _, small, _ = smoke_cells(smoke)
    _, _, before = _mlflow(smoke)
    # extend K: only the new cells' runs appear
    snakemake(*cfg(smoke), "cluster={k: [8, 4], methods: [apc, static]}")
    info, studies, grown = _mlflow(smoke)
    new = {k for k in grown if "-k4-" in k}
    assert len(studies) == 1 and new and info["created"] == len(new) and info["updated"] == 0
    assert {k: r.info.run_id for k, r in grown.items() if k not in new} == \
        {k: before[k].info.run_id for k in grown if k not in new}
    s = pd.read_csv(smoke / "summary.csv")
    assert set(s["k"]) == {1, 4, 8} and set(s["method"]) == {"apc", "static"}
    # shrink back: summary, plots and the MLflow view hold exactly the current cells
    snakemake(*cfg(smoke))
    info, studies, shrunk = _mlflow(smoke)
    assert set(shrunk) == {c.key for c in small} and info["retired"] == len(new)
    s = pd.read_csv(smoke / "summary.csv")
    assert len(s) == 2 * len(small) and 4 not in set(s["k"])
    assert {k: r.info.run_id for k, r in shrunk.items()} == {k: r.info.run_id for k, r in before.items()}
    # rerun: nothing to do, and a forced sync changes nothing
    assert "Nothing to be done" in (lambda r: r.stdout + r.stderr)(snakemake("-n", *cfg(smoke)))
    snakemake("--forcerun", "track", *cfg(smoke))
    info, _, again = _mlflow(smoke)
    assert (info["created"], info["updated"], info["retired"]) == (0, 0, 0)
    assert {k: r.info.run_id for k, r in again.items()} == {k: r.info.run_id for k, r in shrunk.items()}


def test_real_model_masks_dense_equivalence_and_random_half(smoke):
    """On the embedded model: all-ones masks and zero thresholds reproduce dense exactly; a random 50 % mask hurts."""
    import torch

    from apc.perplexity.masking import install_interventions
    from apc.extraction.model import load_model
    from apc.perplexity.scoring import score_windows

    model, _ = load_model(smoke / "model" / "manifest.json")
    windows = torch.from_numpy(np.load(smoke / "tokens" / "test.npy"))[:1]
    dense = score_windows(model, windows, bos=True, progress=False)
    projs = ["gate", "up", "down", "down_in"]
    widths = {"gate": 1536, "up": 1536, "down": 576, "down_in": 1536}
    zero = {p: [0.0] * 30 for p in projs}
    ones = {p: torch.ones(1, 4, widths[p], dtype=torch.bool) for p in projs}
    with install_interventions(model, "sparse", projections=projs, thresholds=zero, skip_first_position=True):
        assert score_windows(model, windows, bos=True, progress=False)["nll"] == dense["nll"]
    with install_interventions(model, "centroid_only", projections=projs, thresholds=zero, centroids=ones,
                               skip_first_position=True) as h:
        assert score_windows(model, windows, bos=True, progress=False)["nll"] == dense["nll"]
    assert all(v == 1.0 for v in h.kept_fraction().values())
    with install_interventions(model, "random", projections=["down_in"], thresholds={"down_in": [0.0] * 30},
                               random_density={"down_in": 0.5}, skip_first_position=True) as h:
        rnd = score_windows(model, windows, bos=True, progress=False)
    assert h.kept_fraction()["down_in"] == pytest.approx(0.5)
    assert np.isfinite(rnd["ppl"]) and rnd["ppl"] > 1.5 * dense["ppl"]


def test_grouped_kernel_scores_the_same_perplexity_as_the_hooks(smoke):
    """On the embedded model with the smoke run's down_in centroids: the grouped FFN kernel (each token
    computes only its centroid's neurons) gives the hook path's per-window NLL within float tolerance."""
    import torch

    from apc.clustering import load_centroids
    from apc.extraction.model import load_model
    from apc.perplexity.protocol import score

    model, _ = load_model(smoke / "model" / "manifest.json")
    windows = torch.from_numpy(np.load(smoke / "tokens" / "test.npy"))[:1]
    th = json.loads((smoke / "thresholds.json").read_text())["projections"]["down_in"]
    thresholds = {"down_in": [r["threshold"] for r in th]}
    cents = {"down_in": torch.from_numpy(load_centroids(smoke / "clusters/down_in/per_layer/apc-k8-d0.6-s0/centroids.npy")[0])}
    kw = dict(bos=True, projections=["down_in"], thresholds=thresholds, centroids=cents, detail=True)
    hooks = score(model, windows, "centroid_only", kernel="hooks", **kw)
    grouped = score(model, windows, "centroid_only", kernel="grouped", **kw)
    assert np.allclose(grouped["window_nll_sum"], hooks["window_nll_sum"], rtol=1e-4)
    assert grouped["kept"]["down_in"] == pytest.approx(hooks["kept"]["down_in"], abs=1e-9)
    assert grouped["layer_kept"]["down_in"] == pytest.approx(hooks["layer_kept"]["down_in"], abs=1e-9)
    dense = score(model, windows, "dense", bos=True)
    assert grouped["ppl"] > 1.01 * dense["ppl"]  # the masks do act


def _frontier(out):
    from apc.results.inputs import sweep_files

    c, _, _ = smoke_cells(out)
    return c, sweep_files(c)


def test_predictor_reports_have_sane_metrics(smoke):
    c, files = _frontier(smoke)
    lay = Layout(smoke)
    cell = Cell("down_in", "per_layer", "apc", 8, 0.6, 0)
    rep = json.loads(Path(lay.cluster_predictor_report(cell, "linear")).read_text())
    tot = rep["total"]
    assert rep["cell"] == cell.key and rep["layers_fitted"] == list(range(30)) and tot["n_layers"] == 30
    m1 = tot["masks"][0]
    assert m1["top_m"] == 1 and 1 / 8 < m1["accuracy"] <= 1  # better than chance among K = 8 ids
    assert 0 < m1["recall"] <= tot["oracle"]["recall"] + 0.02  # the oracle id covers best
    assert m1["recall"] > m1["random_recall"]  # the predicted centroid beats a random mask of its density
    assert m1["compute_share"] == pytest.approx(0.6, abs=1e-3) and 0 < m1["precision"] <= 1
    assert tot["flops_per_token"] == 2 * 576 * 8 and tot["flops_share"] == pytest.approx(2 * 576 * 8 / (6 * 576 * 1536))
    n1 = json.loads(Path(lay.neuron_predictor_report("down_in", "linear-k8-x1", 0)).read_text())
    n4 = json.loads(Path(lay.neuron_predictor_report("down_in", "linear-k8-x4", 0)).read_text())
    assert n4["rank"] == 4 * n1["rank"] and n1["matched"]["flops_per_token"] == tot["flops_per_token"]
    assert abs(n1["total"]["flops_share"] - tot["flops_share"]) <= 2 * (576 + 1536) / (6 * 576 * 1536)
    assert [m["density"] for m in n1["total"]["masks"]] == [0.6]
    assert n1["total"]["masks"][0]["compute_share"] == pytest.approx(0.6, abs=1e-3)


def test_frontier_points_table_and_plot(smoke):
    c, files = _frontier(smoke)
    dense = json.loads((smoke / "ppl" / "dense.json").read_text())
    assert len(files.points) == 18  # threshold, random, cats, chess, teal, wina, rsparse, griffin, oracle, static,
    # predicted, two neuron ranks, experts, the plugin's topk, and teal-model at its three shares
    table = pd.read_csv(smoke / "frontier.csv")
    assert len(table) == len(files.points) and set(table["line"]) == {p.line for p in files.points}
    model = table[table["compute_scope"] == "model"]
    table = table[table["compute_scope"] != "model"]
    assert np.allclose(table["compute_share"], table["ffn_flops_share"] + table["predictor_flops_share"]
                       + table["rotation_flops_share"])  # the overheads (R-Sparse's low-rank part) counted
    # TEAL as published: its attention inputs kept at its share too, its compute over every linear layer
    assert set(model["line"]) == {"teal-model"} and sorted(model["share"]) == [0.5, 0.6, 0.75]
    assert np.allclose(model["attn_qkv_share"], model["share"], atol=0.1)
    assert np.allclose(model["attn_o_share"], model["share"], atol=0.15)
    assert np.allclose(model["ffn_compute_share"], model["ffn_flops_share"])
    assert (np.abs(model["compute_share"] - model["share"]) < 0.1).all() and model["gen_agree"].notna().all()
    pairs = pd.read_csv(smoke / "frontier_paired.csv")
    assert "teal-model" not in set(pairs["line"]) | set(pairs["against"])  # never paired with FFN-scope lines
    assert table["ppl_lo"].isna().all()  # 7 blocks (GRIFFIN: 6): n/a
    assert (table["kl"] > 0).all() and (table["top1"] < 1).all() and table["kl_hi"].isna().all()
    assert (smoke / "plots" / "frontier_kl_down_in.png").stat().st_size > 5000
    decision = pd.read_csv(smoke / "frontier_decision.csv")  # the rule writes the decision beside the table
    assert set(decision["line"]) == set(table["line"]) | set(model["line"]) and {"share_1.05", "share_kl0.05", "share_kl0.2"} <= set(decision)
    row = table.set_index("line")
    # GRIFFIN scores the tokens after its prompt (a quarter of each window), the others every token
    assert (table["tokens"] == dense["tokens"]).sum() == len(table) - 1
    assert row.loc["griffin", "tokens"] == 2 * (128 - 32) and row.loc["griffin", "ffn_flops_share"] == pytest.approx(0.6, abs=1e-3)
    wina = row.loc["wina"]
    assert wina["gate_share"] == wina["up_share"] < 1 and abs(wina["ffn_flops_share"] - 0.6) < 0.05
    # FLOPs per product: what each method must run to decide its mask
    before = table[table["family"].isin(["oracle", "predicted", "neuron", "random"])]
    assert np.allclose(before["ffn_flops_share"], before["kept_share"], atol=1e-9)
    thr, cats = row.loc["threshold-self"], row.loc["cats"]
    assert thr["ffn_flops_share"] == pytest.approx((2 + thr["kept_share"]) / 3)
    assert (thr["gate_share"], thr["up_share"]) == (1.0, 1.0)
    assert cats["ffn_flops_share"] == pytest.approx((1 + 2 * cats["kept_share"]) / 3) and cats["gate_share"] == 1.0
    assert cats["share"] == pytest.approx(0.4) and abs(cats["kept_share"] - 0.4) < 0.03  # placed at compute 0.6
    teal = row.loc["teal"]
    assert teal["gate_share"] == teal["up_share"] < 1 and teal["down_share"] == pytest.approx(teal["kept_share"])
    assert abs(teal["ffn_flops_share"] - 0.6) < 0.03
    # the batch view: B = 1 is the kept share; a union of more tokens reads more rows; ids group the reads
    assert np.allclose(table["union_b1"], table["kept_share"], atol=1e-9)
    tok = table[table["line"] != "griffin"]  # GRIFFIN's batch view is over sequences: 2 windows, no group of 4
    assert (tok["union_b16"] >= tok["union_b4"] - 1e-12).all() and (tok["union_b4"] >= tok["union_b1"] - 1e-12).all()
    assert np.isnan(row.loc["griffin", "union_b4"])
    oracle = row.loc["oracle.per_layer.apc-k8-s0"]
    assert oracle["grouped_b1"] == pytest.approx(oracle["kept_share"], abs=1e-3)
    assert oracle["union_b16"] <= oracle["grouped_b16"] + 1e-9 and np.isnan(row.loc["random", "grouped_b4"])
    assert (smoke / "plots" / "batch_down_in.png").stat().st_size > 5000
    assert abs(row.loc["threshold-self", "kept_share"] - 0.6) < 0.02  # calibrated on train, measured on test
    assert row.loc["random", "kept_share"] == pytest.approx(round(0.6 * 1536) / 1536)  # pure random, no threshold
    for line in ("oracle.per_layer.apc-k8-s0", "predicted-linear-m1.per_layer.apc-k8-s0"):
        assert row.loc[line, "kept_share"] == pytest.approx(0.6, abs=1e-3)
        assert row.loc[line, "cells"] == "down_in=down_in/per_layer/apc-k8-d0.6-s0"
    assert row.loc["oracle.per_layer.apc-k8-s0", "predictor_flops_share"] == 0
    assert row.loc["predicted-linear-m1.per_layer.apc-k8-s0", "predictor_flops_share"] > 0
    # the neuron-experts line: decided before the FFN, its grouped read is the union of contiguous blocks
    ex = row.loc["experts-learned.s0.2-e32"]
    assert ex["family"] == "experts" and ex["ffn_flops_share"] == pytest.approx(ex["kept_share"], abs=1e-9)
    assert ex["grouped_b16"] == ex["union_b16"] and abs(ex["compute_share"] - 0.6) < 0.03
    assert ex["cells"] == "down_in=experts/down_in/s0.2-e32" and ex["predictor_flops_share"] > 0
    # the predicted mask in the predicted mode is the mode the frontier claims
    for p, path in zip(files.points, files.frontier):
        d = json.loads(Path(path).read_text())
        assert d["line"] == p.line and d["mode"] == parse(p.line).mode
        assert len(d["window_nll_sum"]) == d["windows"] == 2
    assert row.loc["threshold-self", "ppl"] < row.loc["random", "ppl"]  # magnitude beats chance at equal share
    png = smoke / "plots" / "frontier_down_in.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_the_plugin_line_is_on_the_smoke_frontier(smoke):
    table = pd.read_csv(smoke / "frontier.csv").set_index("line")
    row = table.loc["topk"]
    assert row["family"] == "topk" and row["mode"] == "topk" and np.isfinite(row["ppl"]) and row["kl"] > 0
    # decided from down_in itself: gate and up run in full, down on the kept neurons
    assert (row["gate_share"], row["up_share"]) == (1.0, 1.0)
    assert row["kept_share"] == pytest.approx(round(0.6 * 1536) / 1536)
    assert row["ffn_flops_share"] == pytest.approx((2 + row["kept_share"]) / 3)
    assert row["ppl"] < table.loc["random", "ppl"]  # the top |down_in| beats chance at the same share


def test_mlflow_one_run_per_frontier_point(smoke):
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    c, files = _frontier(smoke)
    info = json.loads((smoke / "mlflow_runs.json").read_text())
    assert info["frontier"] == len(files.points)
    runs = MlflowClient(info["tracking_uri"]).search_runs(
        [info["experiment_id"]], f"tags.`apc.study` = '{info['study']}' and tags.`apc.kind` = 'frontier'",
        run_view_type=ViewType.ACTIVE_ONLY, max_results=1000)
    by_key = {r.data.tags["apc.cell_key"]: r for r in runs}
    assert len(by_key) == len(runs) == len(files.points) and set(by_key) == {p.key for p in files.points}
    table = pd.read_csv(smoke / "frontier.csv")
    for p in files.points:
        r = by_key[p.key]
        row = table[(table["line"] == p.line) & np.isclose(table["share"], p.share)].iloc[0]  # teal-model: 3 shares
        assert r.info.run_name == p.key and r.data.tags["mlflow.parentRunId"] == info["parent"]
        assert r.data.metrics["ppl"] == pytest.approx(row["ppl"])
        assert r.data.metrics["kl"] == pytest.approx(row["kl"])
        assert r.data.metrics["compute_share"] == pytest.approx(row["compute_share"])
        if np.isfinite(row["union_b16"]):
            assert r.data.metrics["union_b16"] == pytest.approx(row["union_b16"])
        else:  # GRIFFIN: one mask per window, and the smoke run has fewer than 16 windows
            assert p.line == "griffin" and "union_b16" not in r.data.metrics
        assert r.data.metrics["down_share"] == pytest.approx(row["down_share"])
    assert by_key[f"frontier/down_in/oracle.per_layer.apc-k8-s0/0.6"].data.tags["apc.frontier_cells"] == \
        "down_in=down_in/per_layer/apc-k8-d0.6-s0"


def test_frontier_bad_configs_stop_with_one_clear_message(tmp_path):
    cases = [
        ("predict={kinds: [linear, forest]}", "config key 'predict.kinds.1'"),
        ("predict={top_m: [9]}", "config key 'predict.top_m': [9] exceed K=8"),
        ("frontier={cells: [{method: nosuch, k: 8, scope: per_layer}]}", "config key 'frontier.cells': unknown method"),
        ("frontier={pset: {gate: [up]}}", "config key 'frontier.pset.gate'"),
    ]
    runs = [DagRun("-n", "--config", "preset=smoke", f"outdir={tmp_path}", override) for override, _ in cases]
    for (override, message), run in zip(cases, runs):  # the dry runs ran side by side
        res = run.result(check=False)
        assert res.returncode != 0 and message in res.stdout + res.stderr, (override, res.stderr[-2000:])


def test_weighted_and_product_cells_end_to_end(smoke_magnitude):
    """Extra cells on down_in: output-weighted APC and product APC, through every stage and MLflow."""
    smoke = smoke_magnitude
    lay = Layout(smoke)
    wout, pq = Cell("down_in", "per_layer", "apc_wout", 8, 0.6, 0), Cell("down_in", "per_layer", "apc_product", 4, 0.6, 0)
    norms = np.load(smoke / "model" / "down_norms.npy")
    assert norms.shape == (30, 1536) and (norms > 0).all()
    extract = json.loads((smoke / "patterns" / "test" / "extract.json").read_text())
    assert extract["magnitude_projections"] == ["down_in"] and extract["magnitude_bytes"] >= 30 * 1536 * 254
    m = json.loads(Path(lay.centroids_meta(wout)).read_text())
    assert m["method"] == "apc_wout" and m["base_method"] == "apc_weighted" and m["options"]["weighting"] == "output"
    p = json.loads(Path(lay.centroids_meta(pq)).read_text())
    assert p["product_groups"] == 2 and p["k_per_group"] == 4 and p["n_sets"] == 30
    assert p["mask_density"] == pytest.approx(0.6, abs=1e-3)
    for cell in (wout, pq, Cell("down_in", "per_layer", "apc", 8, 0.6, 0)):  # binary tables too
        t = pd.read_csv(lay.eval_table(cell), dtype={"layer": str})
        assert t["mass_recall"].between(0, 1, inclusive="neither").all()
        total = t[t["layer"] == "all"]
        assert (total["mass_recall"] > total["recall"]).all()  # the kept active neurons are the larger ones
    t = pd.read_csv(lay.eval_table(pq), dtype={"layer": str})
    assert (t["groups"] == 2).all() and t["centroid_density"].sub(0.6).abs().max() < 1e-3
    dense = json.loads((smoke / "ppl" / "dense.json").read_text())
    for cell, groups in ((wout, 1), (pq, 2)):
        r = json.loads(Path(lay.ppl_cell("down_in", Cell("", *cell.group))).read_text())
        assert r["groups"] == {"down_in": groups}
        only = r["modes"]["centroid_only"]
        assert only["kept"]["down_in"] == pytest.approx(0.6, abs=1e-3) and only["tokens"] == dense["tokens"]
        assert r["modes"]["random"]["density"]["down_in"] == pytest.approx(only["kept"]["down_in"])
    s = pd.read_csv(smoke / "summary.csv")
    row = s[(s["method"] == "apc_product") & (s["split"] == "test")].iloc[0]
    assert row["groups"] == 2 and row["k"] == 4 and row["id_bits"] == pytest.approx(4.0)
    assert row["iterations"] >= 1  # the sidecar (G * K rows) joins on K per group
    assert np.isfinite(row["ppl_down_in_centroid_only"]) and np.isfinite(row["ratio_down_in_centroid_only"])
    info, studies, runs = _mlflow(smoke)
    assert studies[0].data.metrics["magnitude_bytes"] > 0
    for cell in (wout, pq):
        run = runs[cell.key]
        assert 0 < run.data.metrics["test_mass_recall"] < 1
        assert run.data.metrics["ppl_down_in_centroid_only"] == pytest.approx(
            json.loads(Path(lay.ppl_cell("down_in", Cell("", *cell.group))).read_text())
            ["modes"]["centroid_only"]["ppl"])
    assert runs[pq.key].data.metrics["groups"] == 2.0
    assert runs[pq.key].data.metrics["centroid_density"] == pytest.approx(0.6, abs=1e-3)




def test_every_store_is_within_ten_percent_of_its_plan(smoke):
    """The storage plan, computed from the config and the run's manifest, against the bytes on disk."""
    from apc.common.storage import storage_plan

    c, _, _ = smoke_cells(smoke)
    plan = storage_plan(c, root=ROOT)
    names = {s.name for s in plan.stores}
    assert {"patterns/train/gate", "magnitudes/test/down_in", "ffn_inputs/train", "centroids", "predictors"} <= names
    for store in plan.stores:
        if store.name.startswith("model"):  # the cache folder is shared: measure the run's own model folder
            from apc.common.storage import tree_bytes

            real = tree_bytes(Path(json.loads((smoke / "model" / "manifest.json").read_text())["load_path"]))
        else:
            real = store.on_disk()
        assert abs(real - store.bytes) <= 0.1 * store.bytes, (store.name, real, store.bytes)


def test_a_plan_beyond_the_free_space_stops_before_any_job(tmp_path):
    res = snakemake("--config", "preset=smoke", f"outdir={tmp_path / 'big'}", "data={train_tokens: 100000000}",
                    check=False)
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "storage plan for" in out
    assert "the largest store, magnitudes/train/down_in" in out and "is sized by config key 'data.train_tokens'" in out
    assert not (tmp_path / "big" / "model").exists()  # no job ran


def test_a_failing_job_ends_its_log_with_the_console_error(tmp_path):
    """A budget larger than the split fails prepare_data: its log file ends with the error line."""
    out = tmp_path / "fail"
    res = snakemake("--config", "preset=smoke", f"outdir={out}", "data={train_tokens: 2000000}",
                    "store={patterns: {train: 256}, magnitudes: {train: 256}, ffn_inputs: {train: 256}}",
                    "--", str(out / "tokens" / "train.npy"), check=False)
    assert res.returncode != 0
    last = (out / "logs" / "prepare_data-train.log").read_text().rstrip("\n").splitlines()[-1]
    assert last.startswith("ValueError: config key 'data.train_tokens'")
    assert last in (res.stdout + res.stderr).splitlines()
