"""``cats``: ``|act(W_gate h)| >= T`` per layer (CATS, arXiv 2404.08763), T calibrated on train for a kept share.
The gate runs in full; up and down only on the kept neurons: compute share ``(1 + 2 rho) / 3``, so its kept
shares are placed at the frontier's compute shares (:func:`cats_share`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from apc.lines._rules import Keep, calibrated, share_label
from apc.lines.base import Line
from apc.lines.registry import register_line

if TYPE_CHECKING:
    import torch

    from apc.lines._calibrate import LayerMLP


def cats_share(compute_share: float) -> float | None:
    """The kept share rho whose compute share (1 + 2 rho) / 3 is ``compute_share`` (None below 1/3)."""
    rho = (3.0 * float(compute_share) - 1.0) / 2.0
    return round(rho, 6) if rho > 1e-9 else None


def cats_thresholds(mlps: Sequence[LayerMLP], samples: Sequence[torch.Tensor], shares: Sequence[float]) -> dict:
    """``{share: [T per layer]}`` on ``|act(gate(h))|``; ``samples[l]: (n, d_model)``."""
    import torch

    from apc.lines._calibrate import share_threshold

    out = {float(s): [] for s in shares}
    with torch.no_grad():
        for mlp, h in zip(mlps, samples):
            a = mlp.act(mlp.gate(h))
            for s in out:
                out[s].append(share_threshold(a, s))
    return out


@register_line
class Cats(Line):
    family = "cats"
    pattern = r"cats"
    mode = "cats"
    decided_by = "gate"
    gated = True
    calibrates = True
    tap = "gate"
    order = 20
    style = ("-", "D", "#ff7f0e")
    kernel = "gate"
    decode = "cats"

    def label(self, spec):
        return "CATS (|act(gate)| threshold; gate in full)"

    def shares(self, spec, kept_shares):
        return [r for r in map(cats_share, kept_shares) if r is not None]

    def calibrate(self, mlps, samples, shares, settings, *, lines=()):
        return {share_label(s): t for s, t in cats_thresholds(mlps, samples, shares).items()}

    def arrays(self, spec, share, *, projections, calibration, model, windows, settings, inputs, j=0):
        return {"gate_thresholds": {"down_in": calibrated(calibration, share, spec)}}

    def prepare(self, masks, layers, width, model):
        from apc.lines._checks import check_thresholds

        return check_thresholds(masks.gate_thresholds, masks.projections, len(layers), masks.mode, "gate_thresholds")

    def rule(self, state, layer, proj, taps, *, fused):
        return Keep(taps, layer, lambda g: g.abs().float(), state[proj][layer], "gate output")

