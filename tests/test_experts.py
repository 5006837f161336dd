import numpy as np
import pytest
import torch

from apc.clustering.experts import (best_experts, coverage_sums, expert_counts, expert_masks, fit_experts,
                                    load_experts, permuted_weights, save_experts)
from apc.clustering.routers import AnalyticRouter, OracleRouter, representatives
from apc.perplexity.masking import install_interventions
from apc.prediction.experts import fit_expert_cell
from test_prediction import _stores


def _bits(t=200, w=44, seed=0):
    g = torch.Generator().manual_seed(seed)
    rate = torch.linspace(0.05, 0.9, w)
    return torch.rand(t, w, generator=g) < rate


def test_experts_partition_the_non_shared_neurons_into_equal_blocks(tmp_path):
    bits = _bits()
    es, info = fit_experts(bits, 0.25, 4, device="cpu")
    assert len(es.shared) == 12 and es.members.shape == (4, 8)  # 11 raised to 12: 32 = 4 x 8
    freq = bits.float().mean(0).numpy()
    assert freq[es.shared].min() >= np.delete(freq, es.shared).max()  # the most frequent neurons
    assert sorted(es.permutation.tolist()) == list(range(44))  # shared and experts: disjoint, all neurons
    assert (es.assignment() >= 0).sum() == 32 and np.bincount(es.assignment()[es.assignment() >= 0]).tolist() == [8] * 4
    assert es.density(1) == pytest.approx((12 + 8) / 44)
    save_experts(tmp_path / "e.npy", [es, es], {"k": 1})
    back, side = load_experts(tmp_path / "e.npy")
    assert side["n_shared"] == 12 and np.array_equal(back[1].members, es.members)
    with pytest.raises(ValueError, match="no neuron per expert"):
        fit_experts(bits, 0.9, 8, device="cpu")


def test_clustering_groups_co_active_neurons():
    # planted: 4 groups of 8 neurons, each token fires one group; 12 neurons always on
    g = torch.Generator().manual_seed(1)
    group = torch.randint(0, 4, (300,), generator=g)
    planted = torch.randperm(32, generator=g).view(4, 8)
    bits = torch.zeros(300, 44, dtype=torch.bool)
    bits[:, 32:] = True
    for e in range(4):
        bits[(group == e)[:, None] & torch.zeros(1, 44, dtype=torch.bool).index_fill(1, planted[e], True)] = True
    es, _ = fit_experts(bits, 12 / 44, 4, device="cpu")
    assert sorted(map(sorted, es.members.tolist())) == sorted(map(sorted, planted.tolist()))
    sums = coverage_sums(bits, es, best_experts(expert_counts(bits, es), 1))
    assert sums["covered"] == sums["active"]


def test_permuted_ffn_equals_the_original_with_every_expert_on(tiny_llama):
    model = tiny_llama.double()
    mlp = model.model.layers[1].mlp
    es, _ = fit_experts(_bits(seed=3), 0.2, 4, device="cpu")
    x = torch.randn(7, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    g, u, d = permuted_weights(mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight, es)
    mid = mlp.act_fn(x @ g.T) * (x @ u.T)
    ref_mid = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
    # the same products in another row order: equal up to the BLAS kernel's summation order
    torch.testing.assert_close(mid, ref_mid[:, torch.from_numpy(es.permutation)], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(mid @ d.T, mlp(x), rtol=1e-12, atol=1e-12)
    # the masked model with every expert chosen is the dense model, bit for bit
    model = model.float()
    sets = [fit_experts(_bits(seed=l), 0.2, 4, device="cpu")[0] for l in range(3)]
    cents = torch.stack([expert_masks(s) for s in sets])
    routers = [AnalyticRouter.from_weights(layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight,
                                           representatives(_bits(seed=l), s)) for l, (layer, s) in
               enumerate(zip(model.model.layers, sets))]
    ids = torch.randint(2, 128, (2, 16), generator=torch.Generator().manual_seed(5))
    dense = model(ids).logits
    with install_interventions(model, "predicted", projections=["down_in"], thresholds={"down_in": [0.0] * 3},
                               centroids={"down_in": cents}, predictors={"down_in": routers}, top_m=4, skip_first_position=False) as h:
        full = model(ids).logits
    assert torch.equal(full, dense) and h.kept_fraction()["down_in"] == 1.0
    with install_interventions(model, "predicted", projections=["down_in"], thresholds={"down_in": [0.0] * 3},
                               centroids={"down_in": cents}, predictors={"down_in": routers}, top_m=1, skip_first_position=False) as h:
        part = model(ids).logits
    assert not torch.equal(part, dense) and h.kept_fraction()["down_in"] == pytest.approx(sets[0].density(1))


def test_oracle_covers_at_least_the_learned_router_on_train(tiny_llama, tmp_path):
    _stores(tiny_llama, tmp_path)
    layers = tiny_llama.model.layers

    def weights(l):
        m = layers[l].mlp
        return m.gate_proj.weight, m.up_proj.weight, m.act_fn

    sets, learned, reps, rep = fit_expert_cell(tmp_path / "ffn", tmp_path / "patterns", "down_in", 0.2, 4, ks=[1, 2],
                                               device="cpu", fit={"epochs": 3}, weights=weights)
    assert len(sets) == len(learned) == 3 and all(len(r) == 4 for r in reps)
    for row in rep["layers"]:
        for k in (1, 2):
            tr = row["train"]
            assert tr["best"][k]["coverage"] >= tr["learned"][k]["coverage"] - 1e-12
            assert tr["best"][k]["coverage"] >= tr["analytic"][k]["coverage"] - 1e-12
            # the oracle router (top-k by true activation mass) covers at least the learned router's mass
            assert tr["oracle"][k]["mass_coverage"] >= tr["learned"][k]["mass_coverage"] - 1e-9
            assert tr["oracle"][k]["mass_coverage"] >= tr["analytic"][k]["mass_coverage"] - 1e-9
            assert tr["best"][k]["density"] == pytest.approx(sets[0].density(k))
        assert row["train"]["best"][2]["coverage"] >= row["train"]["best"][1]["coverage"]
    assert 0 < rep["total"]["oracle"][1]["coverage"] <= 1 and rep["router_flops_share"]["analytic"] > 0


@pytest.mark.parametrize("router", ["analytic", "oracle"])
def test_experts_point_lands_near_its_share_and_reads_the_union(tiny_llama, router):
    from apc.common.neuron_experts import choose_k, parse_expert_line
    from apc.perplexity.experts_line import score_experts_point

    sets = [fit_experts(_bits(seed=l), 0.2, 4, device="cpu")[0] for l in range(3)]
    reps = [representatives(_bits(seed=l), s).tolist() for l, s in enumerate(sets)]
    ids = torch.randint(2, 128, (2, 17), generator=torch.Generator().manual_seed(6))
    ids[:, 0] = 1
    line = f"experts-{router}.s0.2-e4"
    assert parse_expert_line(line) == {"router": router, "shared": 0.2, "n": 4}
    d = score_experts_point(tiny_llama, ids, line, 0.6, bos=True, projection="down_in",
                            thresholds={"down_in": [0.0] * 3}, sets=sets, reps=reps, batch_sizes=[4])
    assert d["k"] == choose_k(len(sets[0].shared), sets[0].size, 4, 44, d["predictor_flops_share"], 0.6)
    assert d["kept_share"] == pytest.approx(sets[0].density(d["k"]))
    assert d["compute_share"] == pytest.approx(d["kept_share"] + d["predictor_flops_share"])
    assert (d["predictor_flops_share"] > 0) == (router == "analytic")
    b = d["batch"]["down_in"]["4"]
    assert b["grouped"] == b["union"] and d["kept_share"] <= b["union"]["mean"] <= 1


def test_experts_cells_get_tracking_records(tmp_path):
    import yaml
    from pathlib import Path
    from apc.common.atomic import write_json
    from apc.common.config import resolve
    from apc.common.layout import Layout
    from apc.results.records import expert_records

    root = Path(__file__).resolve().parent.parent
    raw = yaml.safe_load((root / "config.yaml").read_text())
    c = resolve({**raw, "preset": "smoke", "outdir": str(tmp_path / "res")}, root=root)
    cell = c["experts"]["cells"][0]
    name = f"s{cell['shared']:g}-e{cell['n']}"
    assert expert_records(c) == []  # no report yet
    write_json(Layout(c["outdir"]).experts_report("down_in", name),
               {"shared_share": 0.2, "n_experts": cell["n"], "size": 4, "width": 64, "router_flops_share": {"analytic": 0.01},
                "total": {"best": {"1": {"coverage": 0.5, "density": 0.3}}},
                "layers": [{"seconds": 1.0, "train": {"best": {"1": {"coverage": 0.6}}}}]})
    (rec,) = expert_records(c)
    metrics = {k: v for k, v, _ in rec.metrics}
    assert rec.cell_key == f"experts/down_in/{name}" and rec.kind == "experts" and metrics["test_best_k1_coverage"] == 0.5
    assert metrics["train_best_k1_coverage"] == 0.6 and metrics["router_flops_share_analytic"] == 0.01
