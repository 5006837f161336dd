"""Every FFN family of the layout table on a tiny random model: capture equals the FFN's own
intermediates recomputed from its weights, and masks act exactly where the table says."""

import copy

import pytest
import torch
from transformers.activations import ACT2FN

from apc.common.families import family_named
from apc.common.projections import UnsupportedArchitecture
from apc.common.sites import ffn_sites, model_family, prepare_for_sites
from apc.extraction.capture import ProjectionCapture
from apc.perplexity.masking import install_interventions
from tiny_families import CONFIGS, D_FF, N_LAYERS, VOCAB, tiny_model

FAMILY = {"phi3": "fused", "opt": "plain", "gpt2": "plain", "gpt_neox": "plain", "falcon": "plain",
          "mixtral": "moe", "olmoe": "moe"}
N_EXPERTS, TOP_K = 4, 2


@pytest.fixture(scope="module")
def models():
    return {name: prepare_for_sites(tiny_model(name)) for name in CONFIGS}


@pytest.fixture(scope="module")
def windows():
    w = torch.randint(3, VOCAB, (2, 10), generator=torch.Generator().manual_seed(1))
    w[:, 0] = 1
    return w


def _logits(model, windows):
    with torch.inference_mode():
        return model(windows).logits


def _layers(model):
    for path in ("model.layers", "model.decoder.layers", "transformer.h", "gpt_neox.layers"):
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            return obj
    raise AssertionError("no layers")


def _ffn_input_module(name, layer):
    """The module whose output (OPT: its final layer norm) or input (the others: the FFN) is the FFN input."""
    return layer.final_layer_norm if name == "opt" else layer.mlp


def _ffn_inputs(name, model, windows):
    """Per decoder layer, the FFN input ``(batch, seq, d_model)`` of a dense forward."""
    got, hooks = {}, []
    for i, layer in enumerate(_layers(model)):
        mod = _ffn_input_module(name, layer)
        if name == "opt":
            hooks.append(mod.register_forward_hook(lambda m, a, out, i=i: got.__setitem__(i, out.clone())))
        else:
            hooks.append(mod.register_forward_pre_hook(lambda m, a, i=i: got.__setitem__(i, a[0].clone())))
    _logits(model, windows)
    for h in hooks:
        h.remove()
    return got


def _dense_reference(name, model, layer, h):
    """``{projection: (batch, seq, width)}`` recomputed from the weights of ``layer``'s FFN."""
    cfg = model.config
    if name == "phi3":
        gu = h @ layer.mlp.gate_up_proj.weight.T
        gate, up = gu[..., :D_FF], gu[..., D_FF:]
        mid = up * ACT2FN[cfg.hidden_act](gate)
        return {"gate": gate, "up": up, "down_in": mid, "down": mid @ layer.mlp.down_proj.weight.T}
    if name == "gpt2":  # Conv1D: weight (in, out)
        fc1 = h @ layer.mlp.c_fc.weight + layer.mlp.c_fc.bias
        mid = ACT2FN[cfg.activation_function](fc1)
        return {"fc1": fc1, "down_in": mid, "down": mid @ layer.mlp.c_proj.weight + layer.mlp.c_proj.bias}
    if name == "opt":
        first, second, act = layer.fc1, layer.fc2, torch.relu
    else:
        first, second = layer.mlp.dense_h_to_4h, layer.mlp.dense_4h_to_h
        act = ACT2FN[cfg.hidden_act] if name == "gpt_neox" else torch.nn.functional.gelu
    fc1 = h @ first.weight.T + (0 if first.bias is None else first.bias)
    mid = act(fc1)
    return {"fc1": fc1, "down_in": mid, "down": mid @ second.weight.T + (0 if second.bias is None else second.bias)}


def _moe_reference(model, layer, h, skip_first):
    """Per expert ``{projection: (n_routed, width)}`` over its routed tokens in token order, and the
    routing ``(n_tokens, top_k)``, recomputed from the router and expert weights of ``layer``."""
    seq = h.shape[1]
    flat = h.reshape(-1, h.shape[-1])
    probs = torch.softmax((flat @ layer.mlp.gate.weight.T).float(), dim=-1)
    idx = probs.topk(TOP_K, dim=-1).indices
    keep = torch.arange(flat.shape[0]) % seq != 0 if skip_first else torch.ones(flat.shape[0], dtype=torch.bool)
    ex = layer.mlp.experts
    out = {}
    for e in range(N_EXPERTS):
        toks = ((idx == e).any(dim=1) & keep).nonzero().squeeze(1)
        gu = flat[toks] @ ex.gate_up_proj[e].T
        gate, up = gu[:, :D_FF], gu[:, D_FF:]
        mid = ACT2FN[model.config.hidden_act](gate) * up
        out[e] = {"gate": gate, "up": up, "down_in": mid, "down": mid @ ex.down_proj[e].T}
    return out, idx[keep]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_family_and_widths_from_the_layout_table(models, name):
    model = models[name]
    family = model_family(model)
    assert family.name == FAMILY[name]
    sites = ffn_sites(model)
    assert len(sites) == N_LAYERS * (N_EXPERTS if family.experts else 1)
    for p in family.projections:
        assert sites[-1].width(p) == (16 if p == "down" else D_FF)
    if not family.experts:
        with pytest.raises(UnsupportedArchitecture, match="its projections are"):
            sites[0].width("gate" if family.name == "plain" else "fc1")


@pytest.mark.parametrize("name", ["phi3", "opt", "gpt2", "gpt_neox", "falcon"])
def test_capture_equals_recomputed_intermediates_dense_families(models, windows, name):
    model = models[name]
    projs = list(model_family(model).projections)
    got = {}
    with ProjectionCapture(model, projs, lambda p, l, x: got.__setitem__((p, l), x.clone()), skip_first=True):
        inputs = _ffn_inputs(name, model, windows)
    for i, layer in enumerate(_layers(model)):
        with torch.no_grad():
            ref = _dense_reference(name, model, layer, inputs[i].view(*windows.shape, -1))  # OPT: flat rows
        for p in projs:
            want = ref[p][:, 1:].reshape(-1, ref[p].shape[-1])
            assert got[(p, i)].shape == want.shape
            torch.testing.assert_close(got[(p, i)], want, rtol=1e-5, atol=1e-6)
    if name == "opt":  # ReLU: down_in has exact zeros where fc1 <= 0
        assert torch.equal(got[("down_in", 0)] == 0, got[("fc1", 0)] <= 0)


@pytest.mark.parametrize("name", ["mixtral", "olmoe"])
@pytest.mark.parametrize("skip", [False, True])
def test_capture_equals_recomputed_expert_intermediates_and_routing(models, windows, name, skip):
    model = models[name]
    got, routing, inputs = {}, {}, {}
    hooks = [layer.mlp.register_forward_pre_hook(lambda m, a, i=i: inputs.__setitem__(i, a[0].clone()))
             for i, layer in enumerate(_layers(model))]
    with ProjectionCapture(model, ["gate", "up", "down", "down_in"],
                           lambda p, l, x: got.__setitem__((p, l), x.clone()), skip_first=skip,
                           routing=lambda l, idx: routing.__setitem__(l, idx.clone())):
        _logits(model, windows)
    for h in hooks:
        h.remove()
    n_rows = windows.numel() - (windows.shape[0] if skip else 0)
    for i, layer in enumerate(_layers(model)):
        with torch.no_grad():
            ref, idx = _moe_reference(model, layer, inputs[i], skip)
        assert torch.equal(routing[i], idx) and routing[i].shape == (n_rows, TOP_K)
        assert sum(got[("gate", i * N_EXPERTS + e)].shape[0] for e in range(N_EXPERTS)) == TOP_K * n_rows
        for e in range(N_EXPERTS):
            for p in ("gate", "up", "down_in", "down"):
                torch.testing.assert_close(got[(p, i * N_EXPERTS + e)], ref[e][p], rtol=1e-5, atol=1e-6)


def _site_masks(model, proj_widths, zero_site=None):
    """Per-site centroid sets ``(n_sites, 2, width)`` of ones; site ``zero_site`` all zeros on ``down_in``."""
    n = len(ffn_sites(model))
    cents = {p: torch.ones(n, 2, w, dtype=torch.bool) for p, w in proj_widths.items()}
    if zero_site is not None:
        cents["down_in"][zero_site] = False
    return cents


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("skip", [False, True])
def test_all_ones_masks_give_the_dense_logits_exactly(models, windows, name, skip):
    model = models[name]
    site = ffn_sites(model)[0]
    widths = {p: site.width(p) for p in model_family(model).projections}
    n = len(ffn_sites(model))
    dense = _logits(model, windows)
    with install_interventions(model, "centroid_only", projections=list(widths), centroids=_site_masks(model, widths),
                               thresholds={p: [0.0] * n for p in widths}, skip_first_position=skip) as h:
        out = _logits(model, windows)
    assert torch.equal(out, dense)
    assert all(s["kept_fraction"] == 1.0 and s["calls"] > 0 for s in h.stats().values())
    assert torch.equal(_logits(model, windows), dense)  # hooks (and the swapped expert forward) removed


def _drop_second_product(name, model, site):
    """A copy of ``model`` whose FFN site ``site`` contributes nothing but its output bias:
    the weight of its second product (an expert's down_proj slice) set to zero."""
    m = copy.deepcopy(model)
    family = model_family(m)
    with torch.no_grad():
        if family.experts:
            layer = _layers(m)[site // N_EXPERTS]
            layer.mlp.experts.down_proj[site % N_EXPERTS].zero_()
        else:
            layer = _layers(m)[site]
            second = {"opt": lambda: layer.fc2, "gpt2": lambda: layer.mlp.c_proj,
                      "phi3": lambda: layer.mlp.down_proj}.get(name, lambda: layer.mlp.dense_4h_to_h)()
            second.weight.zero_()
    return m


@pytest.mark.parametrize("name", list(CONFIGS))
def test_zero_mask_on_down_in_removes_exactly_that_sites_contribution(models, windows, name):
    model = models[name]
    site = len(ffn_sites(model)) - 1  # the last layer (the last expert of it for a mixture of experts)
    widths = {"down_in": ffn_sites(model)[site].width("down_in")}
    n = len(ffn_sites(model))
    want = _logits(prepare_for_sites(_drop_second_product(name, model, site)), windows)
    with install_interventions(model, "centroid_only", projections=["down_in"], thresholds={"down_in": [0.0] * n},
                               centroids=_site_masks(model, widths, zero_site=site), skip_first_position=False) as h:
        out = _logits(model, windows)
    assert torch.equal(out, want)
    assert not torch.equal(out, _logits(model, windows))  # the site did contribute
    assert 0 < h.stats()["down_in"]["kept_fraction"] < 1


def test_unknown_layout_names_the_modules_of_layer_0():
    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w1, self.w2, self.w3 = (torch.nn.Linear(4, 4) for _ in range(3))

    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = MLP()

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.layers = torch.nn.ModuleList([Layer()])

    with pytest.raises(UnsupportedArchitecture) as err:
        ffn_sites(Model())
    msg = str(err.value)
    assert "layer 0 has modules mlp, mlp.w1, mlp.w2, mlp.w3" in msg and "\n" not in msg
    assert "gated (" in msg and "plain (" in msg and "moe (" in msg


def test_every_family_row_is_exercised():
    assert set(FAMILY.values()) == {"fused", "plain", "moe"} and family_named("gated").first == "gate"


@pytest.mark.parametrize("name", ["opt", "phi3", "olmoe"])
def test_skip_first_position_leaves_position_0_dense(models, windows, name):
    """OPT's FFN sees flat rows and an expert its routed rows: position 0 is still found and kept."""
    model = models[name]
    projs = ["down_in"]
    n = len(ffn_sites(model))
    dense = _logits(model, windows)
    with install_interventions(model, "sparse", projections=projs, thresholds={"down_in": [1e9] * n},
                               skip_first_position=True) as h:
        out = _logits(model, windows)
    assert torch.equal(out[:, 0], dense[:, 0]) and not torch.allclose(out[:, 1:], dense[:, 1:])
    assert h.stats()["down_in"]["kept_fraction"] == 0.0
    assert h.stats()["down_in"]["elements"] == (TOP_K if name == "olmoe" else 1) * N_LAYERS * 2 * 9 * D_FF


def test_a_site_gives_its_modules_by_role(models, tiny_llama):
    site = ffn_sites(tiny_llama)[1]
    assert site["gate"] is tiny_llama.model.layers[1].mlp.gate_proj and site["down"] is site.module("down_in")
    with pytest.raises(UnsupportedArchitecture, match="has no 'gate' module; its modules: fc1, fc2"):
        ffn_sites(models["opt"])[0]["gate"]
    with pytest.raises(UnsupportedArchitecture, match="fused 3-D parameters"):
        ffn_sites(models["olmoe"])[0]["gate"]
