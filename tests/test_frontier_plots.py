"""The frontier plots: which lines a static plot draws (best deployable line per family, upper bounds apart),
the ratio axis, the time and batch plots, the interactive HTML's hover text and its stamp."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from apc.results.frontier_html import hover_rows
from apc.results.frontier_lines import best_line, deployable, line_label, pick_lines
from apc.results.frontier_plots import make_frontier_plots, plot_plan
from apc.results.plot_stamp import frontier_stamp, read_stamp


def _rows(spec, pset="down_in", tokens=1022):
    """Rows of a frontier table: ``spec`` = [(line, family, [(compute share, ratio), ...])]."""
    out = []
    for line, fam, pts in spec:
        for i, (c, r) in enumerate(pts):
            out.append({"pset": pset, "line": line, "family": fam, "share": round(0.4 + 0.2 * i, 1), "ppl": 20 * r,
                        "ratio": r, "ratio_lo": r * 0.95, "ratio_hi": r * 1.05, "kl": 0.1 * r, "kl_lo": 0.09 * r,
                        "kl_hi": 0.11 * r, "top1": 0.9 / r, "top1_lo": 0.85 / r, "top1_hi": 0.95 / r,
                        "tokens": tokens, "windows": 2, "kept_share": c, "compute_share": c,
                        "union_b1": c, "union_b4": min(1.0, 2 * c)})
    return pd.DataFrame(out)


FIXTURE = [("teal", "teal", [(0.4, 3.0), (0.6, 1.2), (0.8, 1.02)]),
           ("teal-block", "teal", [(0.4, 2.0), (0.6, 1.1), (0.8, 1.01)]),
           ("oracle.per_layer.apc-k8-s0", "oracle", [(0.4, 1.5), (0.6, 1.05), (0.8, 1.0)]),
           ("oracle.per_layer.static-k1-s0", "oracle", [(0.4, 30.0), (0.6, 8.0), (0.8, 2.0)]),
           ("predicted-linear-m1.per_layer.apc-k8-s0", "predicted", [(0.43, 9.0), (0.63, 3.0), (0.83, 1.5)]),
           ("experts-oracle.s0.2-e8", "experts", [(0.4, 1.4), (0.6, 1.1), (0.8, 1.0)]),
           ("experts-learned.s0.2-e8", "experts", [(0.4, 9.0), (0.6, 3.0), (0.8, 1.6)]),
           ("neuron-linear-k8-x1", "neuron", [(0.41, 8.0), (0.61, 3.0), (0.81, 1.7)]),
           ("neuron-linear-k8-x4", "neuron", [(0.85, 6.0), (1.05, 2.0), (1.25, 1.4)]),
           ("neuron-mlp-k8-x1", "neuron", [(0.45, 7.0), (0.65, 2.5), (0.85, 1.5)])]


def test_oracle_masks_and_routers_are_upper_bounds():
    assert not deployable("oracle.per_layer.apc-k128-s0") and not deployable("experts-oracle.s0.2-e32")
    assert deployable("oracle.per_layer.static-k1-s0") and deployable("experts-learned.s0.2-e32")
    assert deployable("predicted-linear-m1.per_layer.apc-k128-s0") and deployable("teal-block")
    assert line_label("oracle.per_layer.apc-k128-s0").startswith("upper bound")
    assert not line_label("experts-learned.s0.2-e32").startswith("upper bound")


def test_pick_lines_draws_the_best_deployable_line_of_each_family_then_the_upper_bounds():
    rows = _rows(FIXTURE)
    picked = pick_lines(rows)
    best = [ln for ln in picked if deployable(ln)]
    bounds = [ln for ln in picked if not deployable(ln)]
    assert picked == best + bounds  # upper bounds last, never among a family's best
    assert "teal-block" in best and "teal" not in best  # lower ratio at every shared compute share
    assert "oracle.per_layer.static-k1-s0" in best  # the oracle family's only deployable line, however bad
    assert set(bounds) == {"oracle.per_layer.apc-k8-s0", "experts-oracle.s0.2-e8"}
    assert len({rows.loc[rows["line"] == ln, "family"].iloc[0] for ln in best}) == len(best)  # one per family


def test_best_line_compares_lines_where_their_compute_shares_overlap():
    rows = _rows(FIXTURE)
    neurons = ["neuron-linear-k8-x1", "neuron-linear-k8-x4", "neuron-mlp-k8-x1"]
    # x4 has the lowest ratios at its own (nominal) shares, but only because it spends more compute: on the
    # range it shares with mlp-k8-x1 (0.85) it is far worse
    assert best_line(rows, neurons) == "neuron-mlp-k8-x1"
    assert best_line(rows, ["neuron-linear-k8-x4"]) == "neuron-linear-k8-x4"
    assert best_line(rows, []) is None
    # lines that share no compute range: ranked by their ratios at the kept shares they share
    apart = _rows([("a", "teal", [(0.1, 3.0), (0.2, 2.0)]), ("b", "teal", [(0.5, 1.5), (0.6, 1.2)])])
    assert best_line(apart, ["a", "b"]) == "b"


def test_plots_are_drawn_from_ratios_with_a_stamp(tmp_path):
    rows = _rows(FIXTURE)
    rows["time_share_prefill"] = np.where(rows["family"] == "neuron", np.nan, rows["compute_share"] * 1.2)
    rows["time_share_decode"] = rows["compute_share"] + 0.3
    rows["time_share_decode_b16"] = rows["compute_share"] + 0.5
    table = tmp_path / "frontier.csv"
    rows.to_csv(table, index=False)
    paths = make_frontier_plots(tmp_path / "plots", table)
    names = [p.name for p in paths]
    assert names == [name for name, _, _ in plot_plan(rows)]
    assert {"frontier_down_in.png", "frontier_kl_down_in.png", "frontier_time_down_in.png",
            "frontier_time_b1_down_in.png", "frontier_time_b16_down_in.png", "batch_down_in.png",
            "frontier.html"} == set(names)
    for p in paths:
        stamp, psets = read_stamp(p)
        assert psets == ["down_in"] and stamp == frontier_stamp(table, [], psets)
    assert all(p.stat().st_size > 5000 for p in paths)
    html = (tmp_path / "plots/frontier.html").read_text()
    assert "<script src=" not in html and "Plotly" in html  # plotly.js inlined: opens offline
    assert all(ln in html for ln in rows["line"].unique())  # every line, not only the picked ones


def test_a_changed_row_or_reference_makes_the_stamp_stale(tmp_path):
    rows = pd.concat([_rows(FIXTURE), _rows(FIXTURE[:2], pset="paper")])
    table = tmp_path / "frontier.csv"
    rows.to_csv(table, index=False)
    down, paper = frontier_stamp(table, [], ["down_in"]), frontier_stamp(table, [], ["paper"])
    text = table.read_text().splitlines()
    i = next(i for i, ln in enumerate(text) if ln.startswith("paper,"))
    text[i] = text[i].replace(",2,", ",3,", 1)  # its windows
    table.write_text("\n".join(text) + "\n")
    assert frontier_stamp(table, [], ["down_in"]) == down  # another set's row: this set's plots stay fresh
    assert frontier_stamp(table, [], ["paper"]) != paper
    ref = tmp_path / "dense.json"
    ref.write_text('{"mode": "dense", "ppl": 20.0}')
    assert frontier_stamp(table, [ref], ["down_in"]) != down
    sparse = tmp_path / "sparse-paper.json"
    sparse.write_text('{"mode": "sparse", "pset": "paper", "ppl": 21.0}')
    assert frontier_stamp(table, [ref, sparse], ["down_in"]) == frontier_stamp(table, [ref], ["down_in"])


def test_hover_shows_generation_agreement_or_n_a():
    rows = _rows(FIXTURE[:1], tokens=768)
    plain = hover_rows(rows)
    assert plain[0][0] == "teal" and plain[0][3] == "3 [2.85, 3.15]" and plain[0][6] == "n/a"
    assert plain[0][7] == "768"
    rows = rows.assign(gen_agree=0.8, gen_agree_lo=0.75, gen_agree_hi=0.85, gen_prefix=12.5, ratio_lo=np.nan)
    full = hover_rows(rows)
    assert full[0][6] == "0.800 [0.750, 0.850]; mean agreeing prefix 12.5 tokens"
    assert full[0][3] == "3 [n/a]"


def test_a_line_of_unknown_name_is_refused():
    with pytest.raises(ValueError, match="not a frontier line"):
        deployable("no-such-line")
