"""The frontier lines published after TEAL (WINA, LaRoSA, GRIFFIN) and TEAL's block-wise split, against
hand computations on the tiny model."""

import numpy as np
import pytest
import torch

from apc.lines import LineSpec
from apc.common.projections import decoder_layers
from apc.lines.larosa import rotation_share
from apc.perplexity.accounting import ffn_share, product_shares
from apc.perplexity.calibrate import (block_allocation, layer_mlps, pca_rotations, share_grid, teal_thresholds,
                                      wina_scales)
from apc.perplexity.frontier import score_point
from apc.perplexity.maskargs import Masks
from apc.lines.griffin import griffin_keep
from lines.contract import ids, logits, mlp_inputs
from apc.perplexity.masking import install_interventions
from apc.perplexity.protocol import score


_ids, _logits, _mlp_inputs = ids, logits, mlp_inputs


def _zero(n):
    return {"down_in": [0.0] * n}


def test_wina_with_unit_column_norms_is_teal(tiny_llama):
    ids = _ids()
    mlps = layer_mlps(tiny_llama)
    n, samples = len(mlps), _mlp_inputs(tiny_llama, ids)
    d_model, d_ff = samples[0].shape[1], mlps[0].gate.out_features
    ones = ([torch.ones(d_model)] * n, [torch.ones(d_ff)] * n)
    teal = teal_thresholds(mlps, samples, [0.5] * n)
    assert teal_thresholds(mlps, samples, [0.5] * n, scales=ones) == teal
    args = dict(projections=["down_in"], thresholds=_zero(n), keep_thresholds={"down_in": teal["mid"]},
                input_thresholds=teal["input"], skip_first_position=True)
    with install_interventions(tiny_llama, "teal", **args) as h:
        want, want_stats = _logits(tiny_llama, ids), h.layer_stats()
    with install_interventions(tiny_llama, "wina", input_scale=ones[0], mid_scale=ones[1], **args) as h:
        assert torch.equal(_logits(tiny_llama, ids), want)
        assert h.layer_stats() == want_stats
    # the real column norms: |x_j| * ||W[:, j]|| by hand in the first layer (its input is the dense one)
    s_in, s_mid = wina_scales(mlps)
    g, u = mlps[0].gate.weight, mlps[0].up.weight
    assert torch.allclose(s_in[0], torch.cat([g, u]).norm(dim=0)) and torch.allclose(s_mid[0], mlps[0].down.weight.norm(dim=0))
    wina = teal_thresholds(mlps, samples, [0.5] * n, scales=(s_in, s_mid))
    with install_interventions(tiny_llama, "wina", **{**args, "keep_thresholds": {"down_in": wina["mid"]},
                               "input_thresholds": wina["input"]}, input_scale=s_in, mid_scale=s_mid) as h:
        _logits(tiny_llama, ids)
        sigma = h.layer_stats()["input_kept"]
    assert sigma[0] == pytest.approx(float((samples[0].abs() * s_in[0] >= wina["input"][0]).float().mean()), abs=1e-6)


def test_larosa_at_share_one_is_dense_and_counts_its_rotation(tiny_llama):
    ids = _ids()
    dense = _logits(tiny_llama, ids)
    n = len(decoder_layers(tiny_llama))
    rot = pca_rotations(_mlp_inputs(tiny_llama, _ids(seed=1)))
    assert torch.allclose(rot[0].T @ rot[0], torch.eye(rot[0].shape[0]), atol=1e-5)
    masks = Masks("larosa", projections=("down_in",), thresholds=_zero(n), rotations=rot, input_share=1.0, keep_share=1.0)
    with install_interventions(tiny_llama, masks, skip_first_position=True):
        assert torch.allclose(_logits(tiny_llama, ids), dense, atol=1e-4)
    half = Masks("larosa", projections=("down_in",), thresholds=_zero(n), rotations=rot, input_share=0.5, keep_share=0.5)
    with install_interventions(tiny_llama, half, skip_first_position=True) as h:
        assert not torch.allclose(_logits(tiny_llama, ids), dense, atol=1e-3)
        stats = h.layer_stats()
    d_model, d_ff = rot[0].shape[0], layer_mlps(tiny_llama)[0].gate.out_features
    assert stats["input_kept"] == [d_model // 2 / d_model] * n and stats["kept"]["down_in"] == [d_ff // 2 / d_ff] * n
    assert rotation_share(tiny_llama) == pytest.approx(d_model / (3 * d_ff))
    res = score_point(tiny_llama, ids, "larosa", 0.5, bos=True, projections=["down_in"], thresholds=_zero(n), rotations=rot)
    assert res["compute_share"] == pytest.approx(0.5 + d_model / (3 * d_ff), abs=0.02)


def test_griffin_mask_is_the_prompts_top_neurons_and_constant_after_it(tiny_llama):
    torch.manual_seed(0)
    x = torch.randn(2, 12, 10)
    keep = griffin_keep(x, prompt=4, k=3, start=1)
    assert keep[:, :4].all()
    for b in range(2):
        a = x[b, 1:4] / x[b, 1:4].norm(dim=-1, keepdim=True)
        top = set(a.norm(dim=0).topk(3).indices.tolist())
        assert all(set(keep[b, t].nonzero().flatten().tolist()) == top for t in range(4, 12))

    ids = _ids(n=3, seq=24)
    n = len(decoder_layers(tiny_llama))
    seen = []  # down_proj's (masked) input of layer 0
    hook = decoder_layers(tiny_llama)[0].mlp.down_proj.register_forward_hook(lambda m, a, out: seen.append(a[0]))
    masks = Masks("griffin", projections=("down_in",), thresholds=_zero(n), keep_share=0.5, prompt=8)
    with install_interventions(tiny_llama, masks, skip_first_position=True, batch_sizes=(1, 2)) as h:
        _logits(tiny_llama, ids)
        view = h.batch_view()["down_in"]
        kept = h.layer_stats()["kept"]["down_in"]
    hook.remove()
    zero = seen[0] == 0
    assert not zero[:, :8].any() and (zero[:, 8:] == zero[:, 8:9]).all() and zero[:, 8:].any()
    assert kept == pytest.approx([22 / 44] * n)
    assert view["1"]["union"]["mean"] == pytest.approx(0.5) and view["2"]["union"]["mean"] > 0.5
    res = score_point(tiny_llama, ids, "griffin", 0.5, bos=True, projections=["down_in"], thresholds=_zero(n), prompt=8)
    assert res["tokens"] == res["dense"]["tokens"] == 3 * (24 - 8)
    assert res["compute_share"] == pytest.approx(0.5) and res["dense"]["ppl"] != res["ppl"]
    # the KL against the dense reference of every token picks the rows of the tokens after the prompt
    full = score(tiny_llama, ids, "dense", bos=True, keep_reference=("exact", 0))
    ref = {**{k: torch.from_numpy(v) for k, v in full["reference"].items()}, "kind": "exact", "top_k": 0}
    later = score(tiny_llama, ids, "dense", bos=True, score_from=8, reference=ref)
    assert later["tokens"] == 3 * 16 and later["kl"] == pytest.approx(0.0, abs=1e-9) and later["top1"] == 1.0
    assert later["token_nll"] == pytest.approx(np.reshape(full["token_nll"], (3, 23))[:, 7:].reshape(-1), abs=1e-5)
    masked = score_point(tiny_llama, ids, "griffin", 0.5, bos=True, projections=["down_in"], thresholds=_zero(n),
                         prompt=8, scoring={"reference": ref})
    assert masked["kl"] > 0 and masked["ppl"] == pytest.approx(res["ppl"])


def test_block_allocation_meets_each_layers_compute_within_one_neuron(tiny_llama):
    mlps = layer_mlps(tiny_llama)
    samples = _mlp_inputs(tiny_llama, _ids(n=4))
    d_model, d_ff = samples[0].shape[1], mlps[0].gate.out_features
    grid = share_grid(0.1)
    caches = [{} for _ in mlps]
    for share in (0.8, 0.6, 0.4):
        for mlp, h, cache in zip(mlps, samples, caches):
            b = block_allocation(mlp, h, share, grid, cache)
            assert b == block_allocation(mlp, h, share, grid)  # a shared cache changes nothing
            spent = 2 * d_ff * b["kept_input"] + d_model * b["kept_mid"]
            assert abs(spent - share * 3 * d_model * d_ff) <= d_model / 2 + 1e-6  # half a column of W_down
            assert b["steps"][0] == [1.0, 1.0] and len(b["steps"]) > 1
            assert all((2 * a + m) >= (2 * a2 + m2) for (a, m), (a2, m2) in zip(b["steps"], b["steps"][1:]))
    # the block split is TEAL's input and down_in thresholds at those shares: measured compute as planned
    split = [block_allocation(mlp, h, 0.6, grid) for mlp, h in zip(mlps, samples)]
    t = teal_thresholds(mlps, samples, [b["input_share"] for b in split], [b["mid_share"] for b in split])
    got = np.mean([(2 * a + m) / 3 for a, m in zip(t["input_kept"], t["mid_kept"])])
    assert got == pytest.approx(0.6, abs=0.02)
    assert LineSpec.parse("teal-block").allocation == "block" and LineSpec.parse("teal-block").decided_by == "input"
    assert ffn_share(product_shares("input", {"down_in": [0.5]}, 1, [0.5])) == pytest.approx(0.5)
