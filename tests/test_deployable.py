"""The deployable frontier: FLOPs per matrix product, CATS and TEAL modes, greedy allocation, batch view."""

import numpy as np
import pytest
import torch

from apc.common.projections import decoder_layers
from apc.perplexity.accounting import ffn_share, product_shares, product_weights
from apc.perplexity.calibrate import (cats_thresholds, error_curves, greedy_allocation, layer_mlps, share_grid,
                                      share_threshold, teal_thresholds)
from apc.perplexity.frontier import score_point
from apc.perplexity.masking import install_interventions


def _ids(n=2, seq=33, vocab=128, seed=0):
    return torch.randint(1, vocab, (n, seq), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def _mlp_tensors(model, ids):
    """Per layer, the MLP input h and act(gate(h)) of a dense forward, BOS column dropped: ``(n, width)``."""
    got = {}
    hooks = []
    for l, layer in enumerate(decoder_layers(model)):
        hooks.append(layer.mlp.gate_proj.register_forward_hook(
            lambda m, a, out, l=l: got.__setitem__(l, (a[0][:, 1:].reshape(-1, a[0].shape[-1]),
                                                       layer_act(l)(out)[:, 1:].reshape(-1, out.shape[-1])))))
    layer_act = lambda l: decoder_layers(model)[l].mlp.act_fn  # noqa: E731
    _logits(model, ids)
    for h in hooks:
        h.remove()
    return [got[l] for l in range(len(got))]


def test_accounting_hand_counts():
    n = 3
    ones = {"down_in": [1.0] * n}
    assert ffn_share(product_shares("before", ones, n)) == 1.0
    rho = [0.3, 0.5, 0.8]
    cats = product_shares("gate", {"down_in": rho}, n)
    assert cats["gate"] == [1.0] * n and cats["up"] == rho and cats["down"] == rho
    assert ffn_share(cats) == pytest.approx(np.mean([(1 + 2 * r) / 3 for r in rho]))
    teal = product_shares("input", {"down_in": [1.0] * n}, n, input_kept=rho)
    assert ffn_share(teal) == pytest.approx(np.mean([(2 * r + 1) / 3 for r in rho]))
    thr = product_shares("down_in", {"down_in": rho}, n)
    assert ffn_share(thr) == pytest.approx(np.mean([(2 + r) / 3 for r in rho]))
    assert ffn_share(product_shares("before", {"down_in": rho}, n)) == pytest.approx(np.mean(rho))
    with pytest.raises(ValueError, match="input"):
        product_shares("input", {"down_in": rho}, n)


def test_cats_and_teal_measured_shares_match_hand_counts(tiny_llama):
    ids = _ids()
    tensors = _mlp_tensors(tiny_llama, ids)
    n_layers = len(tensors)
    t_gate = [float(a.abs().median()) for _, a in tensors]
    t_in = [float(h.abs().quantile(0.3)) for h, _ in tensors]
    seen = {}  # act(gate) of the masked pass itself, BOS dropped
    hooks = [layer.mlp.gate_proj.register_forward_hook(
        lambda m, a, out, l=l, act=layer.mlp.act_fn: seen.__setitem__(l, act(out)[:, 1:]))
        for l, layer in enumerate(decoder_layers(tiny_llama))]
    with install_interventions(tiny_llama, "cats", projections=["down_in"], thresholds={"down_in": [0.0] * n_layers},
                               gate_thresholds={"down_in": t_gate}, skip_first_position=True) as h:
        _logits(tiny_llama, ids)
        cats = h.layer_stats()
    for hook in hooks:
        hook.remove()
    hand = [float((seen[l].abs() >= t).float().mean()) for l, t in enumerate(t_gate)]
    assert cats["kept"]["down_in"] == pytest.approx(hand, abs=1e-6)
    shares = product_shares("gate", cats["kept"], n_layers)
    assert ffn_share(shares, product_weights(tiny_llama)) == pytest.approx(np.mean([(1 + 2 * r) / 3 for r in hand]))

    # a TEAL input mask alone (down_in threshold 0): (2 sigma_in + 1) / 3
    with install_interventions(tiny_llama, "teal", projections=["down_in"], thresholds={"down_in": [0.0] * n_layers},
                               keep_thresholds={"down_in": [0.0] * n_layers}, input_thresholds=t_in,
                               skip_first_position=True) as h:
        _logits(tiny_llama, ids)
        teal = h.layer_stats()
    assert teal["kept"]["down_in"] == [1.0] * n_layers
    sigma = teal["input_kept"]
    # the first layer's input is the same in the dense and the masked pass
    assert sigma[0] == pytest.approx(float((tensors[0][0].abs() >= t_in[0]).float().mean()), abs=1e-6)
    shares = product_shares("input", teal["kept"], n_layers, teal["input_kept"])
    assert ffn_share(shares) == pytest.approx(np.mean([(2 * s + 1) / 3 for s in sigma]))


def test_cats_and_teal_at_share_one_are_dense(tiny_llama):
    ids = _ids()
    dense = _logits(tiny_llama, ids)
    mlps = layer_mlps(tiny_llama)
    samples = [h for h, _ in _mlp_tensors(tiny_llama, ids)]
    cats = cats_thresholds(mlps, samples, [1.0])[1.0]
    teal = teal_thresholds(mlps, samples, [1.0] * len(mlps))
    assert cats == [0.0] * len(mlps) and teal["input"] == teal["mid"] == [0.0] * len(mlps)
    n = len(mlps)
    zero = {"down_in": [0.0] * n}
    with install_interventions(tiny_llama, "cats", projections=["down_in"], thresholds=zero,
                               gate_thresholds={"down_in": cats}, skip_first_position=True):
        assert torch.equal(_logits(tiny_llama, ids), dense)
    with install_interventions(tiny_llama, "teal", projections=["down_in"], thresholds=zero,
                               keep_thresholds={"down_in": teal["mid"]}, input_thresholds=teal["input"],
                               skip_first_position=True):
        assert torch.equal(_logits(tiny_llama, ids), dense)
    # and at a lower share they are not dense
    cats5 = cats_thresholds(mlps, samples, [0.5])[0.5]
    with install_interventions(tiny_llama, "cats", projections=["down_in"], thresholds=zero,
                               gate_thresholds={"down_in": cats5}, skip_first_position=True):
        assert not torch.allclose(_logits(tiny_llama, ids), dense)


def test_teal_with_mid_threshold_alone_is_the_threshold_line(tiny_llama):
    ids = _ids()
    n = len(decoder_layers(tiny_llama))
    mids = [m.intermediate(h) for m, (h, _) in zip(layer_mlps(tiny_llama), _mlp_tensors(tiny_llama, ids))]
    t_mid = {"down_in": [float(m.abs().median()) for m in mids]}
    zero = {"down_in": [0.0] * n}
    with install_interventions(tiny_llama, "threshold", projections=["down_in"], thresholds=zero,
                               keep_thresholds=t_mid, skip_first_position=True):
        thr = _logits(tiny_llama, ids)
    with install_interventions(tiny_llama, "teal", projections=["down_in"], thresholds=zero, keep_thresholds=t_mid,
                               input_thresholds=[0.0] * n, skip_first_position=True):
        teal = _logits(tiny_llama, ids)
    assert torch.equal(thr, teal)
    with install_interventions(tiny_llama, "teal", projections=["down_in"], thresholds=zero, keep_thresholds=t_mid,
                               input_thresholds=[0.5] * n, skip_first_position=True):
        assert not torch.equal(_logits(tiny_llama, ids), thr)


def test_share_threshold_keeps_at_most_the_share():
    v = torch.randn(10_000, generator=torch.Generator().manual_seed(1))
    for s in (0.1, 0.4, 0.6, 0.95):
        kept = int((v.abs() >= share_threshold(v, s)).sum())
        assert kept == round(s * v.numel())
    assert share_threshold(v, 1.0) == 0.0
    with pytest.raises(ValueError, match="kept share"):
        share_threshold(v, 0.0)


@pytest.mark.parametrize("budget", [0.37, 0.5, 0.6, 0.8])
def test_greedy_allocation_meets_its_budget_exactly(budget):
    rng = np.random.default_rng(3)
    grid = share_grid(0.05)
    width, n_layers = 97, 6
    errors = np.cumsum(rng.random((n_layers, len(grid))) * rng.random((n_layers, 1)) * 10, axis=1)
    errors[:, 0] = 0.0
    kept = greedy_allocation(errors, grid, budget, width)
    target = round(budget * width) * n_layers
    assert kept.sum() <= target and kept.sum() >= target - n_layers  # within one neuron per layer
    assert np.all(kept >= 0) and np.all(kept <= width)
    # the cheapest layer gives up the most
    cheap = int(np.argmin(errors[:, -1]))
    assert kept[cheap] == kept.min()


def test_greedy_allocation_on_a_model_prefers_insensitive_layers(tiny_llama):
    ids = _ids(n=4)
    mlps = layer_mlps(tiny_llama)
    samples = [h for h, _ in _mlp_tensors(tiny_llama, ids)]
    grid = share_grid(0.1)
    for kind in ("teal", "down_in"):
        err = error_curves(mlps, samples, grid, kind)
        assert err.shape == (len(mlps), len(grid)) and np.all(err[:, 0] == 0) and np.all(err[:, -1] > 0)
        width = mlps[0].gate.out_features
        kept = greedy_allocation(err, grid, 0.6, width)
        assert kept.sum() == round(0.6 * width) * len(mlps)
    # TEAL thresholds at the allocated shares keep those shares on the calibration sample
    t = teal_thresholds(mlps, samples, list(kept / width))
    assert np.all(np.array(t["input_kept"]) <= kept / width + 1e-9)
    with pytest.raises(ValueError, match="error kind"):
        error_curves(mlps, samples, grid, "bogus")


def test_batch_view_union_and_grouped_reads(tiny_llama):
    ids = _ids(n=2, seq=65)
    n = len(decoder_layers(tiny_llama))
    width = tiny_llama.config.intermediate_size
    zero = {"down_in": [0.0] * n}
    # one shared mask (K = 1): union = its share at every B; grouped reads = the share
    c = torch.zeros(n, 1, width, dtype=torch.bool)
    c[:, 0, : width // 2] = True
    with install_interventions(tiny_llama, "centroid_only", projections=["down_in"], thresholds=zero,
                               centroids={"down_in": c}, skip_first_position=True, batch_sizes=(1, 4, 16)) as h:
        _logits(tiny_llama, ids)
        view = h.batch_view()["down_in"]
    for b in ("1", "4", "16"):
        assert view[b]["union"]["mean"] == pytest.approx((width // 2) / width)
        assert view[b]["grouped"]["mean"] == pytest.approx((width // 2) / width)
    # independent random masks of share rho: union = 1 - (1 - rho)^B within sampling error
    rho = 0.25
    with install_interventions(tiny_llama, "random_only", projections=["down_in"], thresholds=zero,
                               random_density={"down_in": rho}, skip_first_position=True, batch_sizes=(1, 4, 16)) as h:
        _logits(tiny_llama, ids)
        view = h.batch_view()["down_in"]
    k = round(rho * width) / width
    for b in (1, 4, 16):
        assert view[str(b)]["union"]["mean"] == pytest.approx(1 - (1 - k) ** b, abs=0.03)
        assert view[str(b)]["grouped"] is None  # no cluster ids
    # two centroids: grouped reads count each distinct id's density once, capped at 1
    c2 = torch.zeros(n, 2, width, dtype=torch.bool)
    c2[:, 0, :30] = True
    c2[:, 1, 10:40] = True
    with install_interventions(tiny_llama, "centroid_only", projections=["down_in"], thresholds=zero,
                               centroids={"down_in": c2}, skip_first_position=True, batch_sizes=(1, 64)) as h:
        _logits(tiny_llama, ids)
        view = h.batch_view()["down_in"]
        counts = h.id_counts()["down_in"]
    assert view["1"]["grouped"]["mean"] == pytest.approx(30 / width)
    both = [c[0] > 0 and c[1] > 0 for c in counts]
    assert 30 / width <= view["64"]["grouped"]["mean"] <= 60 / width
    assert sum(map(sum, counts)) == n * 2 * 64  # every scored token counted once per layer
    if all(both):
        assert view["64"]["union"]["mean"] <= view["64"]["grouped"]["mean"] + 1e-9


def test_score_point_records_products_and_compute(tiny_llama):
    ids = _ids(n=2, seq=17)
    ids[:, 0] = 1  # a BOS column
    n = len(decoder_layers(tiny_llama))
    zero = {"down_in": [0.0] * n}
    mlps = layer_mlps(tiny_llama)
    samples = [h for h, _ in _mlp_tensors(tiny_llama, ids)]
    t = cats_thresholds(mlps, samples, [0.4])[0.4]
    res = score_point(tiny_llama, ids, "cats", 0.4, bos=True, projections=["down_in"], thresholds=zero,
                      gate_thresholds={"down_in": t}, batch_sizes=(1, 4))
    rho = res["layer_kept"]["down_in"]
    assert res["product_shares"]["gate"] == [1.0] * n and res["product_shares"]["up"] == rho
    assert res["compute_share"] == pytest.approx(np.mean([(1 + 2 * r) / 3 for r in rho]))
    assert res["kept_share"] == pytest.approx(np.mean(rho))
    assert res["batch"]["down_in"]["4"]["union"]["mean"] >= res["batch"]["down_in"]["1"]["union"]["mean"]
    with pytest.raises(ValueError, match="down_in"):
        install_interventions(tiny_llama, "cats", projections=["gate"], thresholds={"gate": [0.0] * n},
                              gate_thresholds={"gate": t}, skip_first_position=True)


def test_time_shares_of_points_come_from_their_kernel(tmp_path):
    import json

    from apc.results.frontier import time_columns

    rows = []
    for kernel, groups in (("grouped", 2), ("grouped", 8), ("per_token", 1), ("gate", 1)):
        for tokens in (1, 4096):
            for rho in (0.4, 0.8):
                ratio = {"grouped": 0.5, "per_token": 0.9, "gate": 0.95}[kernel] + rho * (groups / 8) + tokens / 1e5
                rows.append({"device": "cpu", "dtype": "float32", "d_model": 8, "d_ff": 16, "kernel": kernel,
                             "assign": "uniform" if kernel == "grouped" else "-", "tokens": tokens, "groups": groups,
                             "kept_share": rho, "time_ms": ratio, "dense_ms": 1.0, "ratio": ratio, "bound_share": 0.1,
                             "time_over_bound": 1.0, "timing": "wall"})
    table = tmp_path / "t.json"
    table.write_text(json.dumps(rows))
    points = []
    for i, (family, line, counts) in enumerate([("oracle", "oracle.per_layer.apc-k8-s0", [[3, 0, 0, 0, 0, 0, 0, 5]] * 2),
                                                ("neuron", "neuron-linear-k8-x1", None), ("threshold", "threshold-self", None),
                                                ("cats", "cats", None)]):
        p = tmp_path / f"p{i}.json"
        p.write_text(json.dumps({"family": family, "line": line, "kept_share": 0.6, "id_counts": {"down_in": counts}
                                 if counts else {}}))
        points.append(p)
    cols = time_columns(points, table, d_model=8, d_ff=16)
    # the oracle point used 2 distinct ids: the grouped rows at G = 2, halfway between rho 0.4 and 0.8
    assert cols[0]["time_share_decode"] == pytest.approx(0.5 + 0.6 * 2 / 8 + 1e-5)
    assert cols[0]["time_share_prefill"] == pytest.approx(0.5 + 0.6 * 2 / 8 + 0.04096)
    assert cols[1]["time_share_decode"] == pytest.approx(0.9 + 0.6 / 8 + 1e-5)
    assert np.isnan(cols[2]["time_share_decode"])  # a threshold on down_in has no kernel of its own
    assert cols[3]["time_share_prefill"] == pytest.approx(0.95 + 0.6 / 8 + 0.04096)
    assert all(np.isnan(c["time_share_decode"]) for c in time_columns(points, table, d_model=4, d_ff=16))
