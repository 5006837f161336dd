"""R-Sparse: weighted input channels through W, the rest through a low-rank part of W."""

import torch

from apc.lines import parse
from apc.lines.rsparse import factors, kept_for_rank
from apc.perplexity.calibrate import layer_mlps
from lines.contract import check_line, ids, mlp_inputs, point


def test_rsparse_meets_the_line_contract(tiny_llama):
    check_line(tiny_llama, "rsparse")


def test_factors_are_the_best_low_rank_approximation():
    w = torch.randn(24, 16, generator=torch.Generator().manual_seed(0))
    a, b = factors(w, 16)
    assert torch.allclose(a @ b, w, atol=1e-4)  # full rank: exact
    a4, b4 = factors(w, 4)
    s = torch.linalg.svdvals(w)
    assert abs(float(torch.linalg.matrix_norm(w - a4 @ b4) ** 2) - float((s[4:] ** 2).sum())) < 1e-3


def test_rsparse_spends_its_budget(tiny_llama):
    spec = parse("rsparse")
    mlps = layer_mlps(tiny_llama)
    cal = spec.impl.calibrate(mlps, mlp_inputs(tiny_llama, ids(seed=5)), [0.5], {}, lines=[spec])
    t = cal["0.5"]
    d_model, d_ff = 32, mlps[0].gate.out_features
    for r, kept in zip(t["rank"], t["input_kept"]):
        assert abs(kept - kept_for_rank(0.5, r, d_model, d_ff)) < 0.05
    res, _ = point(tiny_llama, "rsparse", 0.5)
    ranks = res["compute_share"] - res["ffn_flops_share"]
    assert abs(ranks - sum(t["rank"]) / len(t["rank"]) * (d_model + d_ff) / (d_model * d_ff)) < 1e-9
    assert abs(res["compute_share"] - 0.5) < 0.08


def test_a_full_rank_remainder_gives_back_the_dense_model(tiny_llama):
    """With factors of full rank the dropped channels go through W exactly: every mask gives dense logits."""
    from apc.perplexity.frontier import line_masks
    from apc.perplexity.masking import install_interventions
    from lines.contract import logits

    spec = parse("rsparse")
    mlps = layer_mlps(tiny_llama)
    cal = spec.impl.calibrate(mlps, mlp_inputs(tiny_llama, ids(seed=5)), [0.4], {}, lines=[spec])
    arrays = spec.impl.arrays(spec, 0.4, projections=["down_in"], calibration=cal, model=tiny_llama, windows=None,
                              settings={}, inputs={})
    arrays["low_rank"] = [{p: factors(getattr(m, p).weight, 64) for p in ("gate", "up", "down")} for m in mlps]
    n = len(mlps)
    masks = line_masks(spec, 0.4, projections=["down_in"], thresholds={"down_in": [0.0] * n}, **arrays)
    dense = logits(tiny_llama, ids())
    with install_interventions(tiny_llama, masks, skip_first_position=True, fused=False) as h:
        got = logits(tiny_llama, ids())
        assert h.kept_fraction()["down_in"] < 0.6  # the mask did drop channels
    assert torch.allclose(got, dense, atol=1e-4)
