"""Every committed frontier plot (docs/results/<run>/plots/) is the one its committed raw files and today's
plotting code draw: the stamp stored in each file equals the stamp recomputed from frontier.csv and the
reference perplexities, and the folder holds exactly the plots the table calls for.  Redraw with
``python docs/render.py plots``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from apc.results.frontier_plots import plot_plan
from apc.results.plot_stamp import frontier_stamp, read_stamp
from conftest import ROOT

RUNS = sorted(p for p in (ROOT / "docs/results").iterdir() if (p / "plots").is_dir())


def _refs(run: Path) -> list[Path]:
    return [run / "ppl/dense.json"] + sorted((run / "ppl").glob("sparse-*.json"))


def test_some_run_has_plots():
    assert RUNS, "no docs/results/<run>/plots/ to check"


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_committed_plots_are_fresh(run):
    table = pd.read_csv(run / "frontier.csv")
    plan = {name: psets for name, psets, _ in plot_plan(table)}
    present = sorted(p.name for p in (run / "plots").iterdir())
    assert present == sorted(plan), f"{run.name}/plots differs from the plots its table calls for; redraw"
    stale = []
    for name, psets in plan.items():
        stamp, stored = read_stamp(run / "plots" / name)
        if stamp is None or stored != sorted(psets) or stamp != frontier_stamp(run / "frontier.csv", _refs(run), psets):
            stale.append(name)
    assert not stale, f"stale plots in {run.name}/plots: {stale}; redraw with `python docs/render.py plots`"
