import pytest
import torch
import transformers
from torch import nn

from apc.common.projections import mlp_projections
from apc.clustering import top_n_mask
from apc.extraction.extract import calibrate_kept_shares
from apc.perplexity.masking import install_interventions, nearest_centroid
from apc.perplexity.scoring import score_windows
from apc.prediction import ClusterPredictor, NeuronPredictor

N_LAYERS, WIDTH = 3, 44


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=WIDTH,
                                   num_hidden_layers=N_LAYERS, num_attention_heads=4, num_key_value_heads=2)
    return transformers.LlamaForCausalLM(cfg).eval()


def _windows(n, s=24, seed=1):
    w = torch.randint(2, 128, (n, s), generator=torch.Generator().manual_seed(seed))
    w[:, 0] = 1
    return w


@pytest.fixture(scope="module")
def thresholds(model):
    table = calibrate_kept_shares(model, _windows(4), ["gate", "up", "down_in"], [0.5], skip_first=True)
    return {p: [r["threshold"] for r in rows] for p, rows in table["shares"][0]["projections"].items()}


class OraclePredictor(nn.Module):
    """Scores from the MLP input that put the oracle centroid first: the projection's own pattern, recomputed."""

    def __init__(self, mlp, proj, threshold, cents):
        super().__init__()
        self.mlp, self.proj, self.threshold, self.cents = mlp, proj, threshold, cents.float()

    def forward(self, h):
        # plain products, not the hooked modules (their hooks would recurse into this predictor)
        gate = nn.functional.linear(h, self.mlp.gate_proj.weight)
        up = nn.functional.linear(h, self.mlp.up_proj.weight)
        x = {"gate": gate, "up": up, "down_in": self.mlp.act_fn(gate) * up}[self.proj]
        ids = nearest_centroid((x.abs().float() >= self.threshold).float(), self.cents)
        return nn.functional.one_hot(ids, self.cents.shape[0]).float()


def _cents(n_sets, k=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return top_n_mask(torch.rand(n_sets * k, WIDTH, generator=g), 26).view(n_sets, k, WIDTH)


@pytest.mark.parametrize("proj,n_sets", [("down_in", N_LAYERS), ("gate", 1), ("up", N_LAYERS)])
def test_perfect_predictor_gives_the_centroid_only_perplexity(model, thresholds, proj, n_sets):
    windows = _windows(3, seed=2)
    cents = {proj: _cents(n_sets)}
    common = dict(projections=[proj], thresholds=thresholds, centroids=cents, skip_first_position=True)
    with install_interventions(model, "centroid_only", **common) as h_oracle:
        oracle = score_windows(model, windows, bos=True, progress=False)
    layers = [layer.mlp for layer in model.model.layers]
    preds = {proj: [OraclePredictor(layers[l], proj, thresholds[proj][l], cents[proj][l if n_sets > 1 else 0])
                    for l in range(N_LAYERS)]}
    with install_interventions(model, "predicted", predictors=preds, **common) as h_pred:
        predicted = score_windows(model, windows, bos=True, progress=False)
    dense = score_windows(model, windows, bos=True, progress=False)
    assert predicted["window_nll_sum"] == oracle["window_nll_sum"]
    assert predicted["ppl"] == oracle["ppl"] != dense["ppl"]
    assert h_pred.kept_fraction() == h_oracle.kept_fraction()


def test_top_m_predicted_mask_is_the_union(model, thresholds):
    torch.manual_seed(3)
    preds = {"gate": [ClusterPredictor(32, 8, "linear").eval() for _ in range(N_LAYERS)]}
    cents = {"gate": _cents(N_LAYERS)}
    windows = _windows(2, seed=4)
    seen = {}
    with install_interventions(model, "predicted", projections=["gate"], thresholds=thresholds, centroids=cents,
                               predictors=preds, top_m=2, skip_first_position=False) as h:
        # registered after the install, this hook sees the masked output
        hook = model.model.layers[1].mlp.gate_proj.register_forward_hook(lambda m, a, out: seen.update(x=out, h=a[0]))
        with torch.inference_mode():
            model(windows)
    hook.remove()
    with torch.inference_mode():
        raw = nn.functional.linear(seen["h"], model.model.layers[1].mlp.gate_proj.weight)
        top2 = preds["gate"][1](seen["h"].reshape(-1, 32)).topk(2, dim=1).indices
    keep = (cents["gate"][1][top2[:, 0]] | cents["gate"][1][top2[:, 1]]).view(raw.shape)
    assert torch.equal(seen["x"], raw.masked_fill(~keep, 0))
    assert 26 / 44 < h.kept_fraction()["gate"] < 1


def test_neuron_predicted_keeps_the_top_scores(model, thresholds):
    torch.manual_seed(5)
    preds = {"down_in": [NeuronPredictor(32, WIDTH, 4).eval() for _ in range(N_LAYERS)]}
    windows = _windows(2, seed=6)
    seen = {}
    mods = mlp_projections(model)[2]
    with install_interventions(model, "neuron_predicted", projections=["down_in"], thresholds=thresholds,
                               predictors=preds, neuron_density={"down_in": 0.25}, skip_first_position=False) as h:
        # registered after the install, the down_proj pre-hook sees the masked input
        hooks = [mods["gate"].register_forward_pre_hook(lambda m, a: seen.update(h=a[0])),
                 mods["down"].register_forward_pre_hook(lambda m, a: seen.update(x=a[0]))]
        with torch.inference_mode():
            model(windows)
    for hk in hooks:
        hk.remove()
    assert h.kept_fraction()["down_in"] == 11 / 44
    with torch.inference_mode():
        mlp = model.model.layers[2].mlp
        raw = mlp.act_fn(mlp.gate_proj(seen["h"])) * mlp.up_proj(seen["h"])
        keep = top_n_mask(preds["down_in"][2](seen["h"].reshape(-1, 32)), 11).view(raw.shape)
    assert torch.equal(seen["x"], raw.masked_fill(~keep, 0))


@pytest.mark.parametrize("rho", [0.4, 0.6, 0.8])
def test_threshold_mode_keeps_rho_on_held_out_windows(model, thresholds, rho):
    cal = calibrate_kept_shares(model, _windows(24, s=64, seed=7), ["down_in", "gate"], [0.4, 0.6, 0.8],
                                skip_first=True)
    table = next(s for s in cal["shares"] if s["kept_share"] == rho)["projections"]
    keep_thr = {p: [r["threshold"] for r in rows] for p, rows in table.items()}
    for p in ("down_in", "gate"):
        for r in table[p]:
            assert abs(1 - r["achieved_sparsity"] - rho) < 0.005  # on the calibration windows
        with install_interventions(model, "threshold", projections=[p], thresholds=thresholds,
                                   keep_thresholds=keep_thr, skip_first_position=True) as h:
            score_windows(model, _windows(12, s=64, seed=8), bos=True, progress=False)
        assert abs(h.kept_fraction()[p] - rho) <= 0.01


def test_predictor_modes_validate_their_inputs(model, thresholds):
    cents = {"gate": _cents(1)}
    good = [ClusterPredictor(32, 8) for _ in range(N_LAYERS)]
    base = dict(projections=["gate"], thresholds=thresholds, centroids=cents, skip_first_position=True)
    with pytest.raises(ValueError, match="needs predictors for projection 'gate'"):
        install_interventions(model, "predicted", **base)
    with pytest.raises(ValueError, match="has 2 entries, expected one per layer"):
        install_interventions(model, "predicted", predictors={"gate": good[:2]}, **base)
    with pytest.raises(ValueError, match=r"predictors\['gate'\]\[0\] scores 5 outputs, but there are 8 centroids"):
        install_interventions(model, "predicted", predictors={"gate": [ClusterPredictor(32, 5)] * 3}, **base)
    with pytest.raises(ValueError, match="takes inputs of width 16, the model's MLP input has width 32"):
        install_interventions(model, "predicted", predictors={"gate": [ClusterPredictor(16, 8)] * 3}, **base)
    with pytest.raises(ValueError, match="top_m must lie in"):
        install_interventions(model, "predicted", predictors={"gate": good}, top_m=9, **base)
    with pytest.raises(ValueError, match="needs neuron_density"):
        install_interventions(model, "neuron_predicted", predictors={"gate": good}, **base)
    with pytest.raises(ValueError, match="scores 8 outputs, but there are 44 neurons of gate"):
        install_interventions(model, "neuron_predicted", predictors={"gate": good}, neuron_density={"gate": 0.5},
                              **base)
    with pytest.raises(ValueError, match="needs keep_thresholds for projection 'gate'"):
        install_interventions(model, "threshold", **base)
    mods = mlp_projections(model)
    assert all(not m[p]._forward_hooks and not m[p]._forward_pre_hooks for m in mods for p in m)


def test_kept_shares_from_saved_histograms_equal_a_second_pass(model, tmp_path):
    """The workflow takes T_rho from the calibration pass's saved histograms: same tables as a pass of its own."""
    from apc.extraction.extract import calibrate_thresholds, kept_shares_from_histograms

    w = _windows(6, s=40, seed=3)
    path = tmp_path / "thresholds_hist.npz"
    calibrate_thresholds(model, w, ["gate", "down_in"], 0.5, skip_first=True, histograms_path=path)
    direct = calibrate_kept_shares(model, w, ["down_in"], [0.4, 0.6, 0.8], skip_first=True)
    saved = kept_shares_from_histograms(path, ["down_in"], [0.4, 0.6, 0.8])
    assert saved["shares"] == direct["shares"] and saved["n_tokens"] == direct["n_tokens"] == 6 * 39
    assert saved["method"] == direct["method"]
    with pytest.raises(KeyError, match="no histograms of projection.*'up'"):
        kept_shares_from_histograms(path, ["up"], [0.5])
    assert [p.name for p in tmp_path.iterdir()] == ["thresholds_hist.npz"]  # no temporary left behind
