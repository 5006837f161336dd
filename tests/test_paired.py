"""Paired comparisons between frontier lines (apc.results.paired, apc.results.paired_table)."""

import numpy as np
import pandas as pd
import pytest

from apc.perplexity.intervals import mean_interval
from apc.results.paired import at_share, common_tokens, deployable, paired_difference, token_positions, verdict
from apc.results.paired_table import decision_columns, lookup, paired_table

WINDOWS, PER = 4, 255  # 1,020 scored tokens: 31 blocks of 32


def point(nll, line="teal", share=0.6, kl=None, top1=None, score_from=1, pset="down_in"):
    nll = np.asarray(nll, float)
    per = len(nll) // WINDOWS
    rng = np.random.default_rng(abs(hash(line)) % 2**32)
    return {"pset": pset, "line": line, "compute_share": share, "windows": WINDOWS, "window_tokens": [per] * WINDOWS,
            "score_from": score_from, "block_tokens": 32, "token_nll": nll,
            "token_kl": np.abs(nll - 2) if kl is None else kl,
            "token_top1": (rng.random(len(nll)) < 0.8).astype(float) if top1 is None else top1}


def hard(seed=0, n=WINDOWS * PER):
    """Per-token NLLs whose difficulty varies a lot and in runs (blocks of neighbouring hard tokens)."""
    rng = np.random.default_rng(seed)
    return np.repeat(rng.gamma(1.0, 3.0, n // 15 + 1), 15)[:n] + rng.normal(0, 0.1, n)


def place(p):
    return at_share([p], p["compute_share"])


def test_a_line_against_itself_is_zero():
    p = point(hard())
    d = paired_difference(place(p), place(p))
    for m in ("log_ratio", "kl", "top1"):
        assert d[m] == (0.0, 0.0, 0.0)
    assert d["tokens"] == WINDOWS * PER and d["units"] == WINDOWS * PER // 32


def test_a_clearly_better_line_excludes_zero():
    rng = np.random.default_rng(1)
    a = hard()
    b = a + 0.3 + rng.normal(0, 0.5, a.size)
    d = paired_difference(place(point(a, "teal")), place(point(b, "wina")))
    diff, lo, hi = d["log_ratio"]
    assert hi < 0 and lo < diff < hi
    assert verdict(diff, lo, hi) == "better" and verdict(-diff, -hi, -lo) == "worse"
    assert verdict(0.01, -0.02, 0.04) == "tie" and verdict(0.1, np.nan, np.nan) == "n/a"
    assert verdict(0.05, 0.01, 0.09, "top1") == "better"  # a higher top-1 agreement is better


def test_pairing_uses_the_same_blocks_on_both_sides():
    a = hard()
    shift = 0.05
    d = paired_difference(place(point(a + shift, "wina")), place(point(a, "teal")))
    assert d["log_ratio"] == pytest.approx((shift, shift, shift), abs=1e-9)  # same starts: the shift alone
    # the unpaired intervals of the two lines overlap: only the pairing tells them apart
    lo_a, hi_a = mean_interval(a)
    lo_b, hi_b = mean_interval(a + shift)
    assert lo_b < hi_a
    # breaking the token alignment (a different order of b's tokens) widens the interval past zero
    b = np.roll(a, 500) + shift
    _, lo, hi = paired_difference(place(point(b, "wina")), place(point(a, "teal")))["log_ratio"]
    assert lo < 0 < hi


def test_interpolated_replicates_stay_paired():
    a = hard()
    lo_pt, hi_pt = point(a, "wina", 0.5), point(a + 0.2, "wina", 0.7)
    mid = point(a + 0.1, "teal", 0.6)
    wina = at_share([hi_pt, lo_pt], 0.6)
    assert not wina.exact and wina.weights == pytest.approx((0.5, 0.5))
    assert paired_difference(wina, place(mid))["log_ratio"] == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    one_third = at_share([lo_pt, hi_pt], 0.55)
    assert paired_difference(one_third, place(mid))["log_ratio"] == pytest.approx((-0.05,) * 3, abs=1e-9)


def test_places_within_the_tolerance_only():
    pts = [point(hard(), "teal", s) for s in (0.405, 0.6, 0.8)]
    assert at_share(pts, 0.4).exact and at_share(pts, 0.4).compute_share == 0.405
    assert at_share(pts, 0.7).points == (pts[1], pts[2])
    assert at_share(pts, 0.3) is None and at_share(pts, 0.9) is None  # outside its points: no place
    assert at_share(pts, 0.395).exact and at_share(pts, 0.394) is None


def test_griffin_is_paired_on_its_own_tokens():
    full = hard()
    start = 9  # GRIFFIN scores the positions after its 8-token prompt: 247 of each window's 255
    keep = np.concatenate([np.arange(w * PER + start - 1, (w + 1) * PER) for w in range(WINDOWS)])
    g = point(full[keep] + 0.0, "griffin", score_from=start)
    f = point(full, "teal")
    assert (token_positions(g) == keep).all() and (token_positions(f) == np.arange(full.size)).all()
    ia, ib = common_tokens(g, f)
    assert (ia == np.arange(keep.size)).all() and (ib == keep).all()
    d = paired_difference(place(g), place(f))
    assert d["tokens"] == keep.size and d["log_ratio"] == pytest.approx((0.0, 0.0, 0.0), abs=1e-9)
    # a line better everywhere except on the prompt is better on the common tokens, though not on all tokens
    worse_on_prompt = full - 0.2
    worse_on_prompt[np.setdiff1d(np.arange(full.size), keep)] += 50.0
    diff, lo, hi = paired_difference(place(point(full[keep], "griffin", score_from=start)),
                                     place(point(worse_on_prompt, "wina")))["log_ratio"]
    assert diff == pytest.approx(0.2) and lo > 0


def test_deployable_lines_and_upper_bounds():
    assert not deployable("oracle.per_layer.apc-k128-s0")
    assert not deployable("oracle.per_layer.apc_weighted_layer_greedy-k128-s0")
    assert not deployable("experts-oracle.s0.2-e32")
    for line in ("oracle.per_layer.static-k1-s0", "predicted-linear-m1.per_layer.apc-k128-s0", "teal", "wina",
                 "griffin", "neuron-linear-k128-x1", "experts-learned.s0.2-e32", "random", "cats"):
        assert deployable(line), line
    with pytest.raises(ValueError, match="not a frontier line"):
        deployable("no-such-line")


def test_decision_columns_never_call_an_upper_bound_best():
    a = hard()
    rng = np.random.default_rng(3)
    pts = []
    for share in (0.4, 0.6, 0.8):
        pts += [point(a - 1.0, "oracle.per_layer.apc-k128-s0", share),  # better than every deployable line
                point(a, "teal", share), point(a + 0.001 * rng.normal(size=a.size), "wina", share),
                point(a + 1.0 + rng.normal(0, 0.3, a.size), "random", share)]
    pairs = paired_table(pts)
    assert len(pairs) == 3 * 6  # every unordered pair of 4 lines at each share
    assert lookup(pairs, 0.6, "teal", "random")[2] < 0
    d1 = lookup(pairs, 0.6, "random", "teal")
    d2 = lookup(pairs, 0.6, "teal", "random")
    assert d1[0] == pytest.approx(-d2[0]) and d1[1] == pytest.approx(-d2[2])
    lines = pd.DataFrame({"pset": ["down_in"] * 4, "line": ["oracle.per_layer.apc-k128-s0", "teal", "wina", "random"]})
    dec = decision_columns(pairs, lines).set_index("line")
    assert not dec.loc["oracle.per_layer.apc-k128-s0", "deployable"]
    for s in ("0.4", "0.6", "0.8"):
        assert set(dec[f"best_{s}"]) <= {"teal", "wina"}
        assert dec.loc["oracle.per_layer.apc-k128-s0", f"verdict_{s}"] == "better, upper bound"
        assert dec.loc[dec[f"best_{s}"].iloc[0], f"verdict_{s}"] == "tie"  # teal and wina: no paired difference
        assert dec.loc["random", f"verdict_{s}"] == "worse"


def test_the_decision_table_gets_the_paired_columns_and_the_pairs_file(tmp_path):
    import json

    from apc.results.frontier import paired_decision, with_deployable

    a, paths = hard(), []
    for line, shift in (("teal", 0.0), ("random", 2.0), ("oracle.per_layer.apc-k128-s0", -1.0)):
        for share in (0.4, 0.6, 0.8):
            p = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in point(a + shift, line, share).items()}
            paths.append(tmp_path / f"{line}-{share}.json")
            paths[-1].write_text(json.dumps(p))
    dec = pd.DataFrame({"pset": ["down_in"] * 3, "line": ["teal", "random", "oracle.per_layer.apc-k128-s0"]})
    out = paired_decision(dec, paths, tmp_path / "frontier_paired.csv").set_index("line")
    assert list(out["deployable"]) == [True, True, False]
    assert (out["best_0.6"] == "teal").all() and out.loc["teal", "verdict_0.6"] == "best"
    assert out.loc["random", "d_log_ratio_0.6"] == pytest.approx(2.0) and out.loc["random", "verdict_0.6"] == "worse"
    assert out.loc["oracle.per_layer.apc-k128-s0", "verdict_0.8"] == "better, upper bound"
    pairs = pd.read_csv(tmp_path / "frontier_paired.csv")
    assert len(pairs) == 3 * 3 and set(pairs["share"]) == {0.4, 0.6, 0.8}
    table = with_deployable(pd.DataFrame({"pset": ["down_in"] * 2, "line": ["teal", "experts-oracle.s0.2-e32"]}))
    assert list(table.columns) == ["pset", "line", "deployable"] and list(table["deployable"]) == [True, False]
