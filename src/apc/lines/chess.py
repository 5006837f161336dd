"""``chess``: CHESS (junhuihe-hjh/CHESS, arXiv 2409.01366): CATS with channel-wise thresholds.  Channel i of
``down_in`` is kept where ``|act(W_gate h)_i| * mean|up_i| >= T``, ``mean|up_i|`` the mean magnitude of the up
projection's output i on train FFN inputs, T per layer calibrated for a kept share: the same as CATS with a
threshold ``T / mean|up_i|`` per channel.  Decided from the gate (it runs in full; up and down only on the kept
neurons), so its kept shares are placed at the frontier's compute shares, as CATS's are."""

from __future__ import annotations

from apc.lines._rules import Keep, calibrated, share_label
from apc.lines.base import Line
from apc.lines.registry import register_line


@register_line
class Chess(Line):
    family = "chess"
    pattern = r"chess"
    mode = "chess"
    decided_by = "gate"
    gated = True
    calibrates = True
    tap = "gate"
    order = 21
    style = ("-", "d", "#f5a55a")
    kernel = "gate"
    decode = "cats"

    def label(self, spec):
        return "CHESS (|act(gate)| x mean|up| per channel; gate in full)"

    def shares(self, spec, kept_shares):
        from apc.lines.cats import cats_share  # the same compute share (1 + 2 rho) / 3

        return [r for r in map(cats_share, kept_shares) if r is not None]

    def calibrate(self, mlps, samples, shares, settings, *, lines=()):
        """``{"up_scale": [(d_ff,) per layer], share label: [T per layer]}`` from ``samples[l]: (n, d_model)``."""
        import torch

        from apc.lines._calibrate import share_threshold

        out = {"up_scale": [], **{share_label(s): [] for s in shares}}
        with torch.no_grad():
            for mlp, h in zip(mlps, samples):
                scale = mlp.up(h).abs().float().mean(dim=0)
                score = mlp.act(mlp.gate(h)).abs().float() * scale
                out["up_scale"].append(scale.cpu())
                for s in shares:
                    out[share_label(s)].append(share_threshold(score, float(s)))
        return out

    def arrays(self, spec, share, *, projections, calibration, model, windows, settings, inputs, j=0):
        return {"thresholds_chess": calibrated(calibration, share, spec), "up_scale": calibration["up_scale"]}

    def prepare(self, masks, layers, width, model):
        from apc.lines._checks import check_thresholds, check_vectors

        a = masks.arrays or {}
        n = len(layers)
        thr = check_thresholds({"down_in": a.get("thresholds_chess")} if "thresholds_chess" in a else None,
                               ["down_in"], n, masks.mode, "thresholds_chess")["down_in"]
        scale = check_vectors(a.get("up_scale"), n, width["down_in"], "up_scale", masks.mode, layers,
                              lambda site: site.device("down_in"))
        return {"thr": thr, "scale": scale}

    def rule(self, state, layer, proj, taps, *, fused):
        scale = state["scale"][layer]
        return Keep(taps, layer, lambda g: g.abs().float() * scale, state["thr"][layer], "gate output")
