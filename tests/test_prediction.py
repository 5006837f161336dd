import numpy as np
import pytest
import torch

from apc.clustering import PackedPatterns, save_centroids, top_n_mask
from apc.extraction.extract import calibrate_thresholds, extract_patterns
from apc.extraction.ffn_inputs import extract_ffn_inputs
from apc.prediction import (ClusterPredictor, NeuronPredictor, build_predictor, cell_centroids, fold_standardization,
                            evaluate_cluster_predictor, evaluate_neuron_predictor, ffn_flops,
                            fit_cluster_predictor, fit_neuron_predictor, load_predictors, matched_rank,
                            neuron_ranks, save_predictors, train_cluster_cell, train_neuron_cell)

D, K = 24, 6
FAST = {"epochs": 10, "lr": 1e-2, "batch_size": 128}


def _planted(n, seed, k=K, d=D):
    """Inputs from k Gaussians with well separated means -> their ids."""
    g = torch.Generator().manual_seed(0)
    means = 4.0 * torch.randn(k, d, generator=g)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, k, (n,), generator=g)
    x = means[ids] + torch.randn(n, d, generator=g)
    return x.half().numpy(), ids


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_cluster_predictor_learns_planted_mapping(kind):
    x, ids = _planted(1200, seed=1)
    tx, tids = _planted(600, seed=2)
    pred, loss = fit_cluster_predictor(x, ids, K, kind=kind, hidden=32, seed=0, device="cpu", **FAST)
    assert loss[-1] < loss[0]
    got = pred.top(torch.from_numpy(tx).float(), 1)[:, 0]
    assert (got == tids).float().mean() >= 0.95
    top2 = pred.top(torch.from_numpy(tx).float(), 2)
    assert torch.equal(top2[:, 0], got)


def test_neuron_predictor_learns_planted_patterns():
    x, ids = _planted(1200, seed=1)
    tx, tids = _planted(600, seed=2)
    g = torch.Generator().manual_seed(3)
    width, n_keep = 40, 12
    proto = top_n_mask(torch.rand(K, width, generator=g), n_keep)  # each id -> a pattern of 12 neurons
    pred, _ = fit_neuron_predictor(x, proto[ids], rank=8, seed=0, device="cpu", **FAST)
    with torch.no_grad():
        mask = top_n_mask(pred(torch.from_numpy(tx).float()), n_keep)
    exact = (mask == proto[tids]).all(dim=1).float().mean()
    assert exact >= 0.95


def test_fitting_is_deterministic_for_a_seed():
    x, ids = _planted(300, seed=1)
    a, _ = fit_cluster_predictor(x, ids, K, kind="mlp", hidden=16, seed=5, device="cpu", epochs=2)
    b, _ = fit_cluster_predictor(x, ids, K, kind="mlp", hidden=16, seed=5, device="cpu", epochs=2)
    c, _ = fit_cluster_predictor(x, ids, K, kind="mlp", hidden=16, seed=6, device="cpu", epochs=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["net.0.weight"], sc["net.0.weight"])


def _brute(bits, mask):
    hits = (bits & mask).sum()
    return {"recall": hits / bits.sum(), "precision": hits / mask.sum(), "compute_share": mask.mean()}


def test_cluster_mask_metrics_equal_brute_force():
    g = np.random.default_rng(0)
    n, w, k = 257, 19, 7
    bits = g.random((n, w)) < 0.4
    cents = g.random((k, w)) < 0.5
    pred = ClusterPredictor(D, k, "linear").eval()
    x = g.standard_normal((n, D)).astype(np.float16)
    res = evaluate_cluster_predictor(pred, x, PackedPatterns.from_bits(bits), cents, top_m=[1, 3], chunk_size=50,
                                     device="cpu")
    oracle = (bits[:, None, :] & ~cents[None]).sum(-1).argmin(axis=1)
    with torch.no_grad():
        order = np.argsort(-pred(torch.from_numpy(x).float()).numpy(), axis=1, kind="stable")
    assert res["n_tokens"] == n
    assert res["oracle"]["recall"] == pytest.approx(_brute(bits, cents[oracle])["recall"], abs=1e-12)
    for row, m in zip(res["masks"], [1, 3]):
        chosen = order[:, :m]
        assert row["top_m"] == m
        assert row["accuracy"] == pytest.approx((chosen == oracle[:, None]).any(1).mean(), abs=1e-12)
        mask = cents[chosen].any(axis=1)
        for key, want in _brute(bits, mask).items():
            assert row[key] == pytest.approx(want, abs=1e-12), key
    assert res["masks"][1]["recall"] >= res["masks"][0]["recall"]
    assert res["flops_per_token"] == 2 * D * k and res["params"] == D * k + k
    assert res["flops_share"] == pytest.approx(2 * D * k / (6 * D * w))


def test_neuron_mask_metrics_equal_brute_force():
    g = np.random.default_rng(1)
    n, w = 123, 30
    bits = g.random((n, w)) < 0.3
    x = g.standard_normal((n, D)).astype(np.float16)
    pred = NeuronPredictor(D, w, rank=4).eval()
    res = evaluate_neuron_predictor(pred, x, PackedPatterns.from_bits(bits), [0.4, 0.6], chunk_size=40, device="cpu")
    with torch.no_grad():
        order = np.argsort(-pred(torch.from_numpy(x).float()).numpy(), axis=1, kind="stable")
    for row, d in zip(res["masks"], [0.4, 0.6]):
        kept = int(np.floor(d * w + 0.5))
        mask = np.zeros_like(bits)
        np.put_along_axis(mask, order[:, :kept], True, axis=1)
        assert row["density"] == d and row["n_keep"] == kept
        for key, want in _brute(bits, mask).items():
            assert row[key] == pytest.approx(want, abs=1e-12), key
    assert res["flops_per_token"] == 2 * 4 * (D + w)


def test_ranks_match_flops_and_costs():
    lin = ClusterPredictor(576, 128, "linear")
    r, big = neuron_ranks(lin.flops_per_token(), 576, 1536, larger=4)
    assert abs(NeuronPredictor(576, 1536, r).flops_per_token() - lin.flops_per_token()) <= 576 + 1536
    assert big == 4 * r and matched_rank(1, 576, 1536) == 1
    mlp = ClusterPredictor(576, 128, "mlp", hidden=256)
    assert mlp.flops_per_token() == 2 * (576 * 256 + 256 * 128)
    assert ffn_flops(576, 1536) == 6 * 576 * 1536


def test_save_load_roundtrip(tmp_path):
    preds = [ClusterPredictor(D, K, "mlp", hidden=8), ClusterPredictor(D, K, "mlp", hidden=8)]
    preds[0].norm.fit(torch.randn(50, D))
    side = save_predictors(tmp_path / "p", preds, {"projection": "gate"})
    assert side["projection"] == "gate" and side["layers"] == 2
    loaded, meta = load_predictors(tmp_path / "p.safetensors")
    x = torch.randn(5, D)
    with torch.no_grad():
        for a, b in zip(preds, loaded):
            assert torch.equal(a(x), b(x))
    neuron = [NeuronPredictor(D, 11, 3)]
    save_predictors(tmp_path / "n.safetensors", neuron)
    assert load_predictors(tmp_path / "n")[0][0].config() == {"kind": "neuron", "d_model": D, "d_ff": 11, "rank": 3}


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown predictor kind 'tree'"):
        ClusterPredictor(D, K, "tree")
    with pytest.raises(ValueError, match="unknown predictor kind 'tree'"):
        build_predictor({"kind": "tree", "d_model": D})
    x, ids = _planted(50, seed=1)
    with pytest.raises(ValueError, match="unknown predictor kind"):
        fit_cluster_predictor(x, ids, K, kind="svm", device="cpu")
    with pytest.raises(ValueError, match="labels must be"):
        fit_cluster_predictor(x, ids[:10], K, device="cpu")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        fit_cluster_predictor(x, ids, 3, device="cpu")
    with pytest.raises(ValueError, match="unknown fit options"):
        fit_cluster_predictor(x, ids, K, device="cpu", epoch=3)
    pred = ClusterPredictor(D, K)
    pats = PackedPatterns.from_bits(np.zeros((50, 9), dtype=bool))
    with pytest.raises(ValueError, match=r"centroids must be \(k, width\) = \(6, 9\)"):
        evaluate_cluster_predictor(pred, x, pats, np.zeros((K, 8), dtype=bool), device="cpu")
    with pytest.raises(ValueError, match="inputs have 49 tokens but patterns have 50"):
        evaluate_cluster_predictor(pred, x[:49], pats, np.zeros((K, 9), dtype=bool), device="cpu")
    with pytest.raises(ValueError, match="neuron predictor has width 8, the patterns 9"):
        evaluate_neuron_predictor(NeuronPredictor(D, 8, 2), x, pats, [0.5], device="cpu")
    with pytest.raises(FileNotFoundError, match="has no centroids: missing .*centroids.npy"):
        cell_centroids(tmp_path / "cell" / "centroids.npy", [0])
    save_centroids(tmp_path / "c.npy", np.ones((2, 3, 9), dtype=bool), {"layers": [0, 2]})
    with pytest.raises(ValueError, match=r"no centroid set for layers \[1\]"):
        cell_centroids(tmp_path / "c.npy", [0, 1, 2])
    save_centroids(tmp_path / "one.npy", np.ones((1, 3, 9), dtype=bool), {"scope": "per_layer", "layers": [2]})
    with pytest.raises(ValueError, match=r"no centroid set for layers \[0\]"):
        cell_centroids(tmp_path / "one.npy", [0, 2])
    save_centroids(tmp_path / "pooled.npy", np.ones((1, 3, 9), dtype=bool), {"scope": "pooled"})
    assert set(cell_centroids(tmp_path / "pooled.npy", [0, 4])[0]) == {0, 4}
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a predictor sidecar"):
        load_predictors(tmp_path / "bad")


def _stores(model, root):
    g = torch.Generator().manual_seed(2)
    for split, n in (("train", 12), ("test", 4)):
        w = torch.randint(2, 128, (n, 33), generator=g)
        w[:, 0] = 1
        if split == "train":
            thr = calibrate_thresholds(model, w, ["down_in"], 0.5, skip_first=True)
        extract_patterns(model, w, thr, ["down_in"], root / "patterns", split, {}, skip_first=True)
        extract_ffn_inputs(model, w, root / "ffn", split, {}, skip_first=True)
    return thr


def test_cell_drivers_fit_every_layer_and_save(tiny_llama, tmp_path):
    _stores(tiny_llama, tmp_path)
    g = torch.Generator().manual_seed(4)
    cents = top_n_mask(torch.rand(3, 8, 44, generator=g).view(24, 44), 26).view(3, 8, 44)
    save_centroids(tmp_path / "cell" / "centroids.npy", cents, {"scope": "per_layer", "k": 8})
    preds, rep = train_cluster_cell(tmp_path / "ffn", tmp_path / "patterns", tmp_path / "cell" / "centroids.npy",
                                    "down_in", kind="linear", top_m=[1, 2], device="cpu", fit={"epochs": 3})
    assert len(preds) == 3 and [r["layer"] for r in rep["layers"]] == [0, 1, 2]
    for r in rep["layers"]:
        assert r["n_train"] == 12 * 32 and r["test"]["n_tokens"] == 4 * 32
        top1, top2 = r["test"]["masks"]
        assert 0 <= top1["accuracy"] <= top2["accuracy"] <= 1
        assert top2["compute_share"] >= top1["compute_share"]
    nps, nrep = train_neuron_cell(tmp_path / "ffn", tmp_path / "patterns", "down_in", 5, densities=[0.5],
                                  device="cpu", fit={"epochs": 3}, max_train_tokens=100)
    assert [p.rank for p in nps] == [5, 5, 5] and nrep["layers"][0]["n_train"] == 100
    assert nrep["layers"][0]["test"]["masks"][0]["compute_share"] == pytest.approx(22 / 44)


@pytest.mark.parametrize("make", [lambda: ClusterPredictor(D, K, "linear"), lambda: ClusterPredictor(D, K, "mlp", 8),
                                  lambda: NeuronPredictor(D, 13, 3)])
def test_folded_standardization_is_equivalent(make):
    pred = make().eval()
    pred.norm.fit(3.0 + 2.0 * torch.randn(100, D, generator=torch.Generator().manual_seed(0)))
    x = 3.0 + 2.0 * torch.randn(20, D)
    folded = fold_standardization(pred)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), pred(x), rtol=1e-4, atol=1e-4)
    assert isinstance(folded.norm, torch.nn.Identity) and not isinstance(pred.norm, torch.nn.Identity)
    assert folded.flops_per_token() == pred.flops_per_token()
