"""Summary table, plots and the ``python -m apc summary`` command against a fake results tree."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_results import MODES, build_fake_results  # noqa: E402

from apc.common.atomic import read_json  # noqa: E402
from apc.cli import main  # noqa: E402
from apc.results.plots import make_plots  # noqa: E402
from apc.results.inputs import sweep_files  # noqa: E402
from apc.results.summary import build_summary, write_summary  # noqa: E402

SRC = str(Path(__file__).resolve().parents[1] / "src")
METRICS = ("n_tokens", "recall", "paper_precision", "precision", "f1", "centroid_density", "data_density",
           "compute_share", "random_recall")


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("res")
    desc = build_fake_results(out, seeds=(0, 1))
    return out, desc


def _summary(desc) -> pd.DataFrame:
    f = sweep_files(desc["config"])
    return build_summary(f.evals, f.centroid_metas, f.refs, f.ppl)


def _all_row(path: Path, split: str) -> dict:
    with open(path, newline="") as fh:
        return next(r for r in csv.DictReader(fh) if r["split"] == split and r["layer"] == "all")


def test_summary_one_row_per_cell_and_split_equal_to_files(tree):
    out, desc = tree
    df = _summary(desc)
    assert len(df) == 2 * len(desc["cells"])
    keys = set(zip(df["projection"], df["scope"], df["method"], df["k"], df["seed"], df["split"]))
    assert keys == {(*c, s) for c in desc["cells"] for s in ("train", "test")}

    dense = read_json(out / "ppl/dense.json")["ppl"]
    sparse = {p: read_json(out / f"ppl/sparse-{p}.json")["ppl"] for p in desc["psets"]}
    for row in df.itertuples(index=False):
        r = row._asdict()
        name = f"{r['method']}-k{r['k']}-d{r['density']:g}-s{r['seed']}"
        want = _all_row(out / "eval" / r["projection"] / r["scope"] / f"{name}.csv", r["split"])
        for m in METRICS:
            assert r[m] == pytest.approx(float(want[m])), (name, m)
        side = read_json(out / "clusters" / r["projection"] / r["scope"] / name / "centroids.json")
        assert r["iterations"] == side["iterations"]
        assert r["lift"] == pytest.approx(float(want["recall"]) - float(want["random_recall"]))
        for pset, projs in desc["psets"].items():
            cell = read_json(out / "ppl" / pset / r["scope"] / f"{name}.json")
            if r["projection"] not in projs:  # a set's perplexity belongs only to the projections it masks
                assert all(pd.isna(r[f"ppl_{pset}_{mode}"]) for mode in MODES)
                continue
            for mode in MODES:
                assert r[f"ppl_{pset}_{mode}"] == pytest.approx(cell["modes"][mode]["ppl"])
                assert r[f"ppl_{pset}_{mode}_lo"] == pytest.approx(cell["modes"][mode]["ppl_lo"])
                assert r[f"ppl_{pset}_{mode}_hi"] == pytest.approx(cell["modes"][mode]["ppl_hi"])
                assert r[f"ratio_{pset}_{mode}"] == pytest.approx(cell["modes"][mode]["ppl"] / dense)
                assert r[f"ratio_{pset}_{mode}_lo"] < r[f"ratio_{pset}_{mode}"] < r[f"ratio_{pset}_{mode}_hi"]
                for proj in projs:
                    assert r[f"kept_{pset}_{mode}_{proj}"] == pytest.approx(cell["modes"][mode]["kept"][proj])
            assert r[f"ppl_sparse_{pset}"] == pytest.approx(sparse[pset])
        assert r["ppl_dense"] == pytest.approx(dense)


def test_write_summary_roundtrip_and_empty(tree, tmp_path):
    out, desc = tree
    f = sweep_files(desc["config"])
    path = write_summary(tmp_path / "sub" / "summary.csv", f.evals, f.centroid_metas, f.refs, f.ppl)
    back = pd.read_csv(path)
    assert len(back) == 2 * len(desc["cells"])
    assert list(back.columns) == list(_summary(desc).columns)
    assert not list((tmp_path / "sub").glob(".*"))  # no temporaries left
    assert build_summary([]).empty


def test_summary_reads_exactly_its_inputs(tmp_path):
    # a cell that left the sweep, and a hidden temporary, stay on disk but are never read
    out = tmp_path / "res"
    desc = build_fake_results(out, projections=("gate",), psets={"paper": ["gate"]})
    (out / "eval" / "gate" / "pooled" / ".apc-k4-d0.6-s0.csv.XYZ.csv").write_text("garbage,\n1")
    small = {**desc["config"], "cluster": {**desc["config"]["cluster"], "k": [2]}}
    f = sweep_files(small)
    df = build_summary(f.evals, f.centroid_metas, f.refs, f.ppl)
    assert set(df["k"]) == {1, 2} and len(df) == 2 * len(f.cells)


def test_summary_without_ppl_results(tmp_path):
    out = tmp_path / "res"
    desc = build_fake_results(out, projections=("gate",), psets={"paper": ["gate"]})
    f = sweep_files(desc["config"])
    df = build_summary(f.evals, f.centroid_metas)
    assert len(df) == 2 * 6 and not any(c.startswith(("ppl_", "ratio_")) for c in df.columns)


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1024


def test_plots_written(tree, tmp_path):
    out, desc = tree
    f = sweep_files(desc["config"])
    paths = make_plots(tmp_path / "plots", f.evals, f.refs, f.ppl)
    names = {p.name for p in paths}
    assert {"recall_vs_k.png", "precision_vs_k.png", "layer_recall_per_layer.png"} <= names
    assert {f"ppl_{p}.png" for p in desc["psets"]} <= names
    for p in paths:
        assert p.parent == tmp_path / "plots" and _is_png(p), p
    assert not [p for p in (tmp_path / "plots").iterdir() if p.name.startswith(".")]


def test_plots_skip_missing_inputs(tmp_path, caplog):
    assert make_plots(tmp_path / "plots") == []
    out = tmp_path / "res"
    desc = build_fake_results(out, projections=("gate", "down_in"), scopes=("pooled",), methods={"static": [1]})
    f = sweep_files(desc["config"])
    paths = make_plots(tmp_path / "plots2", [], f.refs, f.ppl)  # only perplexity inputs
    assert sorted(p.name for p in paths) == ["ppl_down_in.png", "ppl_paper.png"]
    assert all(_is_png(p) for p in paths)


def test_cli_summary(tree, capsys):
    out, desc = tree
    assert main(["summary", "--outdir", str(out), "--top", "3"]) == 0
    text = capsys.readouterr().out
    lines = text.strip().splitlines()
    assert len(lines) == 4 and "f1" in lines[0] and "ppl_paper_centroid" in lines[0]
    df = _summary(desc)
    best = df[df["split"] == "test"].sort_values("lift", ascending=False).iloc[0]
    assert f"{best['lift']:.4g}" in lines[1] and best["method"] in lines[1]
    assert main(["summary", "--outdir", str(out), "--split", "all"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 1 + 2 * len(desc["cells"])


def test_cli_no_results(tmp_path, capsys):
    assert main(["summary", "--outdir", str(tmp_path / "missing")]) == 1
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["summary", "--outdir", str(tmp_path / "empty")]) == 1
    assert "no resolved config" in capsys.readouterr().err


def test_python_dash_m_apc(tree):
    out, _ = tree
    env = {**os.environ, "PYTHONPATH": SRC}
    res = subprocess.run([sys.executable, "-m", "apc", "summary", "--outdir", str(out), "--top", "2"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert len(res.stdout.strip().splitlines()) == 3


def test_ratio_to_dense_pairs_the_first_tokens_of_a_shorter_result():
    from apc.perplexity.intervals import ppl_ratio
    from apc.results.summary import interval_columns

    rng = np.random.default_rng(0)
    tok = rng.normal(2.4, 1.0, 4000)
    dense = {"ppl": 10.0, "window_nll_sum": list(tok.reshape(4, 1000).sum(1)), "window_tokens": [1000] * 4,
             "token_nll": list(tok)}
    own = tok[:2000] + 0.2
    short = {"ppl": 12.0, "ppl_lo": 11.0, "ppl_hi": 13.0, "window_nll_sum": list(own.reshape(2, 1000).sum(1)),
             "window_tokens": [1000] * 2, "token_nll": list(own), "block_tokens": 32,
             "kl": 0.1, "kl_lo": 0.08, "kl_hi": 0.12, "top1": 0.9, "top1_lo": 0.88, "top1_hi": 0.92}
    cols = interval_columns("ppl_x", short, dense)
    want = ppl_ratio(own, tok[:2000], block=32)
    assert (cols["ratio_x"], cols["ratio_x_lo"], cols["ratio_x_hi"]) == pytest.approx(want)
    assert cols["ratio_x_lo"] == pytest.approx(np.exp(0.2)) == cols["ratio_x_hi"]  # a constant shift, paired
    assert (cols["kl_x"], cols["kl_x_lo"], cols["top1_x_hi"]) == (0.1, 0.08, 0.92)
    few = interval_columns("ppl_x", {**short, "token_nll": list(own[:600])}, dense)  # 18 blocks: n/a
    assert np.isnan(few["ratio_x_lo"]) and np.isnan(few["ratio_x_hi"])
    longer = {**short, "window_nll_sum": [2500.0] * 5, "window_tokens": [1000] * 5}
    assert "ratio_x" not in interval_columns("ppl_x", longer, dense)  # no pairing on windows dense lacks
