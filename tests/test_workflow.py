"""End to end: the whole DAG through Snakemake on the `smoke` preset (real embedded model, tiny budget)."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from apc.patterns import PatternReader
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
