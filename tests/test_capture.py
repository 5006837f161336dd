import pytest
import torch

from apc.common.projections import UnsupportedArchitecture, mlp_projections, projection_width
from apc.extraction.capture import ProjectionCapture


def test_hooked_outputs_equal_manual_mlp(tiny_llama):
    model = tiny_llama
    ids = torch.randint(0, 128, (1, 12), generator=torch.Generator().manual_seed(0))
    got, mlp_in = {}, {}
    hooks = [layer.mlp.register_forward_pre_hook(lambda m, a, i=i: mlp_in.__setitem__(i, a[0].clone()))
             for i, layer in enumerate(model.model.layers)]
    with ProjectionCapture(model, ["gate", "up", "down", "down_in"],
                           lambda p, l, x: got.__setitem__((p, l), x.clone()), skip_first=True):
        with torch.inference_mode():
            model(ids)
    for h in hooks:
        h.remove()
    for i, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        h = mlp_in[i].clone()
        with torch.no_grad():  # recompute on the full window, then drop the BOS position
            gate, up = mlp.gate_proj(h)[0, 1:], mlp.up_proj(h)[0, 1:]
            mid = mlp.act_fn(gate) * up
        torch.testing.assert_close(got[("gate", i)], gate, rtol=0, atol=0)
        torch.testing.assert_close(got[("up", i)], up, rtol=0, atol=0)
        torch.testing.assert_close(got[("down_in", i)], mid, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(got[("down", i)], mlp.down_proj(mid), rtol=1e-6, atol=1e-7)
        assert got[("gate", i)].shape == (11, 44)


def test_capture_only_configured_and_hooks_removed(tiny_llama):
    seen = []
    with ProjectionCapture(tiny_llama, ["up"], lambda p, l, x: seen.append((p, l))):
        tiny_llama(torch.zeros(1, 4, dtype=torch.long))
    assert seen == [("up", 0), ("up", 1), ("up", 2)]
    tiny_llama(torch.zeros(1, 4, dtype=torch.long))
    assert len(seen) == 3


def test_widths_and_unsupported_architecture(tiny_llama):
    assert projection_width(tiny_llama, "gate") == 44 and projection_width(tiny_llama, "down") == 32
    assert projection_width(tiny_llama, "down_in") == 44
    with pytest.raises(UnsupportedArchitecture, match="no decoder layers at any of model.layers"):
        mlp_projections(torch.nn.Linear(3, 3))
    tiny_llama.model.layers[1].mlp.gate_proj = None
    del tiny_llama.model.layers[1].mlp.gate_proj
    with pytest.raises(UnsupportedArchitecture, match=r"layer 0 is gated .* but layer 1 has modules .*mlp\.up_proj"):
        mlp_projections(tiny_llama)
