"""The docs' verdict renderers (docs/render.py, docs/render_verdicts.py) on a fixture frontier whose best line is an
oracle: they never call an upper bound best, they label it one, and they call a tie a tie."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs"))

R = pytest.importorskip("render")
V = pytest.importorskip("render_verdicts")

ORACLE, EXPERT_ORACLE = "oracle.per_layer.apc-k128-s0", "experts-oracle.s0.2-e32"
#: (line, ratio to dense at 0.4 / 0.6 / 0.8, half-width of its interval)
LINES = [(ORACLE, (1.5, 1.02, 1.001), 0.01), (EXPERT_ORACLE, (1.6, 1.03, 1.002), 0.01),
         ("teal", (3.0, 1.14, 1.021), 0.03), ("wina", (3.1, 1.15, 1.013), 0.03),
         ("predicted-linear-m1.per_layer.apc-k128-s0", (5.0, 3.0, 1.5), 0.3), ("neuron-linear-k128-x1", (6.0, 4.0, 2.0), 0.3),
         ("experts-learned.s0.2-e32", (4.0, 2.5, 1.3), 0.2), ("random", (90.0, 80.0, 40.0), 5.0)]


def fixture_frontier() -> pd.DataFrame:
    rows = []
    for line, ratios, half in LINES:
        for share, r in zip((0.4, 0.6, 0.8), ratios):
            kl = np.log(r) + 0.01
            rows.append({"pset": "down_in", "line": line, "family": line.split("-")[0].split(".")[0], "share": share,
                         "compute_share": share + 0.004, "kept_share": share, "tokens": 1022, "windows": 2, "units": 31,
                         "ppl": 18.0 * r, "ppl_lo": 17.0 * r, "ppl_hi": 19.0 * r, "ratio": r, "ratio_lo": r - half,
                         "ratio_hi": r + half, "kl": kl, "kl_lo": kl * 0.9, "kl_hi": kl * 1.1, "top1": 1 / r,
                         "top1_lo": 0.9 / r, "top1_hi": min(1.0, 1.1 / r), "union_b16": 0.9})
    return pd.DataFrame(rows)


@pytest.fixture
def run(tmp_path, monkeypatch):
    (tmp_path / "fix").mkdir()
    fixture_frontier().to_csv(tmp_path / "fix" / "frontier.csv", index=False)
    monkeypatch.setattr(R, "RESULTS", tmp_path)
    R.table.cache_clear()
    yield "fix"
    R.table.cache_clear()


def _never_best(text: str) -> None:
    for line in (ORACLE, EXPERT_ORACLE):
        for m in re.finditer(re.escape(f"`{line}`"), text):
            after = text[m.end():m.end() + 60]
            before = text[max(0, m.start() - 60):m.start()]
            assert "is the best" not in after and "is the only" not in after and " tie" not in after[:40], text
            assert "upper bound" in before + after, f"{line} not labelled an upper bound in: {text}"


def test_verdicts_never_call_an_oracle_line_best(run):
    texts = [R.verdict_sentence(run), R.found_sentence(run, decode_run=None), R.best_per_share(run),
             R.verdict_table(run), R.experts_table(run, 0.6, ref="teal")]
    for t in texts:
        _never_best(t)
    head = R.verdict_sentence(run)
    assert f"`{ORACLE}`" not in head.split(";")[0] or "upper bound" in head
    # the best deployable lines: teal and wina tie (overlapping intervals, no paired table), never the oracle
    assert "`teal` and `wina` tie as the best deployable line" in head
    table = R.best_per_share(run)
    assert ORACLE not in table and EXPERT_ORACLE not in table
    for row in R.best_by_metric(run).splitlines()[2:]:
        assert ORACLE not in row.split("|")[3] and ORACLE not in row.split("|")[4]
    stand = R.cluster_stand(run)
    assert "(upper bound)" in stand.splitlines()[0] and ORACLE not in stand.split("|")[9]


def test_family_claims_label_the_upper_bound(run):
    fam = V.family_claims(run, 0.6)
    assert "`predicted-linear-m1.per_layer.apc-k128-s0` is the only deployable token-cluster line" in fam
    assert f"the upper bound `{ORACLE}` (oracle, not deployable)" in fam
    assert f"the upper bound `{EXPERT_ORACLE}` (oracle, not deployable)" in fam


def test_a_clear_lead_is_called_best(run, tmp_path):
    fr = fixture_frontier()
    fr.loc[fr.line == "teal", ["ratio", "ratio_lo", "ratio_hi"]] = [1.05, 1.04, 1.06]  # apart from wina's at 0.4 too
    fr.to_csv(tmp_path / "fix" / "frontier.csv", index=False)
    R.table.cache_clear()
    v = V.best_of(run, 0.6)
    assert v["best"].line == "teal" and not v["tie"] and v["bound"].line == ORACLE
    assert "`teal` is the best deployable line" in V.claim(v) and "upper bound" in V.claim(v)


def test_a_point_outside_the_tolerance_takes_no_part(run, tmp_path):
    fr = fixture_frontier()
    fr.loc[(fr.line == "teal") & (fr.share == 0.6), "compute_share"] = 0.511
    fr.to_csv(tmp_path / "fix" / "frontier.csv", index=False)
    R.table.cache_clear()
    assert "teal" not in set(V.near(run, 0.6).line)
    assert "`teal`" not in R.experts_table(run, 0.6, ref="wina")


def test_intervals_print_bounds_apart_from_one():
    assert V.interval(1.02, 1.0046, 1.04) == "1.02 [1.005, 1.04]"
    assert V.interval(1.013, 0.999, 1.028, "{:.2f}×") == "1.01× [0.999×, 1.03×]"
    assert V.interval(1.14, 1.10, 1.19, "{:.2f}×") == "1.14× [1.10×, 1.19×]"  # nothing to add
    assert V.distinct([1.011, 1.014], "{:.2f}") == ["1.011", "1.014"]  # bounds apart from each other
    assert V.interval(2.0, float("nan"), 3.0) == "2 [n/a]" and V.interval(float("nan"), 1, 2) == "–"
