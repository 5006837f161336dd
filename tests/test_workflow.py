"""End to end: the whole DAG through Snakemake on the `smoke` preset (real embedded model, tiny budget)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from apc.extraction.patterns import PatternReader
from conftest import ROOT

pytestmark = pytest.mark.slow
PROJS = ["gate", "up", "down", "down_in"]


def snakemake(*args, check=True):
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
    return res


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("wf") / "smoke"
    snakemake("--config", "preset=smoke", f"outdir={out}")
    return out


def cfg(out):
    return ["--config", "preset=smoke", f"outdir={out}"]


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


def test_bad_config_stops_with_one_clear_message(tmp_path):
    res = snakemake("-n", "--config", "preset=smoke", f"outdir={tmp_path}", "extract={sparsity: 1.5}", check=False)
    assert res.returncode != 0
    assert "config key 'extract.sparsity'" in res.stdout + res.stderr
    res = snakemake("-n", "--config", "preset=smoke", "clustr={k: [2]}", check=False)
    assert res.returncode != 0 and "config key 'clustr': unknown key" in res.stdout + res.stderr


def smoke_cells(out):
    import yaml

    from apc.common.config import resolve
    from apc.common.sweep import cluster_cells, perplexity_cells

    c = resolve({**yaml.safe_load((ROOT / "config.yaml").read_text()), "preset": "smoke", "outdir": str(out)}, root=ROOT)
    return c, cluster_cells(c), perplexity_cells(c)


def test_every_cell_has_centroids_and_train_test_tables(smoke):
    c, cells, _ = smoke_cells(smoke)
    assert {x["method"] for x in cells} == {"apc", "kmeans", "random", "static"}
    for cell in cells:
        name = f"{cell['method']}-k{cell['k']}-s{cell['seed']}"
        meta = json.loads((smoke / "clusters" / cell["proj"] / cell["scope"] / name / "centroids.json").read_text())
        n_sets = 30 if cell["scope"] == "per_layer" else 1
        assert meta["n_sets"] == n_sets and meta["k"] == cell["k"] and meta["layers"] == list(range(30))
        if cell["method"] in ("apc", "kmeans"):
            assert meta["history"] and meta["iterations"] >= 1
        if cell["method"] in ("apc", "random", "static"):  # density-capped methods
            assert abs(meta["density"] - c["cluster"]["density"]) < 1e-3
        table = pd.read_csv(smoke / "eval" / cell["proj"] / cell["scope"] / f"{name}.csv", dtype={"layer": str})
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
    assert len(pcells) == 2 * 4  # both scopes x (apc, kmeans, random at K=8 + static)
    for cell in pcells:
        r = json.loads((smoke / "ppl" / cell["pset"] / cell["scope"] /
                        f"{cell['method']}-k{cell['k']}-s{cell['seed']}.json").read_text())
        assert set(r["modes"]) == {"centroid", "centroid_only", "random"}
        for mode in r["modes"].values():
            assert np.isfinite(mode["ppl"]) and mode["tokens"] == dense["tokens"]
        only = r["modes"]["centroid_only"]["kept"]["gate"]
        if cell["method"] != "kmeans":  # density-capped: every centroid, hence every mask, has the same density
            assert only == pytest.approx(r["centroid_density"]["gate"], abs=1e-9)
        # the random control uses the density of the masks actually applied
        assert r["modes"]["random"]["density"]["gate"] == pytest.approx(only)
        # the oracle keeps the overlap of centroid and true mask, less than the centroid alone
        assert r["modes"]["centroid"]["kept"]["gate"] < r["modes"]["centroid_only"]["kept"]["gate"]
        assert r["modes"]["random"]["ppl"] > dense["ppl"]


def test_mlflow_store_summary_plots_and_report(smoke, tmp_path):
    from mlflow.tracking import MlflowClient

    _, cells, pcells = smoke_cells(smoke)
    info = json.loads((smoke / "mlflow_runs.json").read_text())
    expected_children = 2 + 2 * len(cells) + 1 + 1 + len(pcells)  # extract x2, cluster+eval, dense, sparse, ppl
    assert info["children"] == expected_children
    client = MlflowClient(info["tracking_uri"])
    exp = client.get_experiment_by_name("apc")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == info["parent"]]
    assert len(parents) == 1 and len(children) == expected_children
    ev = next(r for r in children if r.data.tags["apc.cell_key"] == "eval/gate/pooled/apc-k8-s0")
    table = pd.read_csv(smoke / "eval" / "gate" / "pooled" / "apc-k8-s0.csv", dtype={"layer": str})
    want = table[(table["layer"] == "all") & (table["split"] == "test")].iloc[0]
    assert ev.data.metrics["test_recall"] == pytest.approx(want["recall"])
    assert ev.data.metrics["test_paper_precision"] == pytest.approx(want["recall"])
    assert ev.data.params["method"] == "apc" and ev.data.params["k"] == "8" and ev.data.params["scope"] == "pooled"

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


def test_forcerun_one_cell_updates_its_run_in_place(smoke):
    from mlflow.tracking import MlflowClient

    before = json.loads((smoke / "mlflow_runs.json").read_text())
    target = smoke / "clusters" / "gate" / "pooled" / "apc-k8-s0" / "centroids.npy"
    old_meta = json.loads(target.with_suffix(".json").read_text())
    res = snakemake("--forcerun", str(target), *cfg(smoke))
    assert "rule cluster" in res.stdout + res.stderr
    new_meta = json.loads(target.with_suffix(".json").read_text())
    assert new_meta["wall_time_s"] != old_meta["wall_time_s"]  # the cell really ran again
    after = json.loads((smoke / "mlflow_runs.json").read_text())
    assert after["parent"] == before["parent"] and after["children"] == before["children"]
    assert after["updated"] >= 1 and after["created"] == 0
    client = MlflowClient(after["tracking_uri"])
    runs = client.search_runs([after["experiment_id"]], "tags.`apc.cell_key` = 'cluster/gate/pooled/apc-k8-s0'")
    assert len(runs) == 1
    assert runs[0].data.metrics["wall_time_s"] == pytest.approx(new_meta["wall_time_s"])


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
