"""``wina``: WINA (microsoft/wina): TEAL's two thresholds on ``|x_j| * ||W[:, j]||_2``, the l2 norm of the
weight column that reads channel j (gate and up stacked for the MLP input, down for ``down_in``).  With unit
column norms it is TEAL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from apc.lines._rules import AtLeast, calibrated, input_threshold
from apc.lines.base import Line
from apc.lines.registry import register_line

if TYPE_CHECKING:
    import torch

    from apc.lines._calibrate import LayerMLP


def wina_scales(mlps: Sequence[LayerMLP]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """WINA's column norms per layer: ``([(d_model,)], [(d_ff,)])`` float32, the l2 norm of each input
    channel's column of ``[W_gate; W_up]`` (stacked) and of ``W_down``'s column of each neuron."""
    import torch

    ins, mids = [], []
    for mlp in mlps:
        g, u = mlp.gate.weight.detach().float(), mlp.up.weight.detach().float()
        ins.append(torch.sqrt((g * g).sum(dim=0) + (u * u).sum(dim=0)))
        mids.append(mlp.down.weight.detach().float().norm(dim=0))
    return ins, mids


@register_line
class Wina(Line):
    family = "wina"
    pattern = r"wina"
    mode = "wina"
    decided_by = "input"
    gated = True
    calibrates = True
    order = 31
    style = ("-", "p", "#d62728")
    decode = "wina"

    def label(self, spec):
        return "WINA (|x| x weight-column norm thresholds)"

    def calibrate(self, mlps, samples, shares, settings, *, lines=()):
        from apc.lines.teal import train_share
        from apc.lines._calibrate import teal_thresholds
        from apc.lines._rules import share_label

        scales = wina_scales(mlps)
        out = {}
        for share in map(float, shares):
            t = teal_thresholds(mlps, samples, [share] * len(mlps), scales=scales)
            out[share_label(share)] = {**t, "train_compute_share": train_share(t)}
        return out

    def arrays(self, spec, share, *, projections, calibration, model, windows, settings, inputs, j=0):
        from apc.lines._calibrate import layer_mlps

        t = calibrated(calibration, share, spec)
        input_scale, mid_scale = wina_scales(layer_mlps(model))
        return {"keep_thresholds": {"down_in": t["mid"]}, "input_thresholds": t["input"],
                "input_scale": input_scale, "mid_scale": mid_scale}

    def prepare(self, masks, layers, width, model):
        from apc.lines.teal import Teal
        from apc.lines._checks import check_vectors

        state = Teal.prepare(self, masks, layers, width, model)
        n = len(layers)
        state["input_scale"] = check_vectors(masks.input_scale, n, layers[0].d_model, "input_scale", masks.mode,
                                             layers, lambda site: site.ffn_input_device)
        state["mid_scale"] = check_vectors(masks.mid_scale, n, width["down_in"], "mid_scale", masks.mode, layers,
                                           lambda site: site.device("down_in"))
        return state

    def rule(self, state, layer, proj, taps, *, fused):
        return AtLeast(state["keep"][proj][layer], state["mid_scale"][layer])

    def input_mask(self, state, layer):
        return input_threshold(state["input"][layer], state["input_scale"][layer])
