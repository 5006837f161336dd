"""``scap``: SCAP (IntelLabs/SCAP): mode-centred thresholds on the FFN's inputs.  Per layer and input channel j,
the mode m_j of the MLP input h_j on train FFN inputs (the peak of a histogram); per token the input entering
gate and up is ``m + (h - m) [|h - m| >= T_in]`` and ``down_in`` is thresholded at ``T_mid`` (its mode is near 0
in a gated FFN), both calibrated for the kept share in TEAL's order.  ``W (m + d) = W m + W d``: the shift's
product ``W m`` is a constant bias computed once; adding it costs ``d_ff`` additions per token for each of gate
and up, counted as the line's overhead."""

from __future__ import annotations

from apc.lines._rules import AtLeast, calibrated, input_threshold, share_label
from apc.lines.base import Line
from apc.lines.registry import register_line

#: histogram bins of the mode estimate, over the channel's 1st to 99th percentile
BINS = 64


def channel_modes(h, bins: int = BINS):
    """``(d_model,)`` float32: the mode of each column of ``h: (n, d_model)`` (the centre of its fullest bin)."""
    import torch

    x = h.float()
    lo, hi = torch.quantile(x, 0.01, dim=0), torch.quantile(x, 0.99, dim=0)
    width = (hi - lo).clamp_min(torch.finfo(torch.float32).tiny) / bins
    idx = ((x - lo) / width).floor().clamp(0, bins - 1).long()
    counts = torch.zeros(bins, x.shape[1], dtype=torch.int64).scatter_add_(0, idx.cpu(), torch.ones_like(idx.cpu()))
    return lo.cpu() + (counts.argmax(dim=0).float() + 0.5) * width.cpu()


@register_line
class Scap(Line):
    family = "scap"
    pattern = r"scap"
    mode = "scap"
    decided_by = "input"
    gated = True
    calibrates = True
    order = 32
    style = ("-", "<", "#98df8a")

    def label(self, spec):
        return "SCAP (mode-centred input thresholds)"

    def calibrate(self, mlps, samples, shares, settings, *, lines=()):
        """``{"modes": [(d_model,) per layer], share label: {"input", "mid", "input_kept", "mid_kept"}}``."""
        import torch

        from apc.lines._calibrate import share_threshold

        out = {"modes": []}
        with torch.no_grad():
            modes = [channel_modes(h) for h in samples]
            out["modes"] = modes
            for s in map(float, shares):
                t = {"input": [], "mid": [], "input_kept": [], "mid_kept": []}
                for mlp, h, m in zip(mlps, samples, modes):
                    c = h.float() - m.to(h.device)
                    t_in = share_threshold(c, s)
                    keep = c.abs() >= t_in
                    mid = mlp.intermediate((m.to(h.device) + c.masked_fill(~keep, 0)).to(h.dtype))
                    t_mid = share_threshold(mid, s)
                    t["input"].append(t_in)
                    t["mid"].append(t_mid)
                    t["input_kept"].append(float(keep.float().mean()))
                    t["mid_kept"].append(float((mid.abs() >= t_mid).float().mean()))
                out[share_label(s)] = t
        return out

    def arrays(self, spec, share, *, projections, calibration, model, windows, settings, inputs, j=0):
        t = calibrated(calibration, share, spec)
        return {"keep_thresholds": {"down_in": t["mid"]}, "input_thresholds": t["input"],
                "modes": calibration["modes"]}

    def prepare(self, masks, layers, width, model):
        from apc.lines._checks import check_thresholds, check_vectors

        n = len(layers)
        keep = check_thresholds(masks.keep_thresholds, masks.projections, n, masks.mode, "keep_thresholds")
        given = {"input": masks.input_thresholds} if masks.input_thresholds is not None else None
        inp = check_thresholds(given, ["input"], n, masks.mode, "input_thresholds")["input"]
        modes = check_vectors((masks.arrays or {}).get("modes"), n, layers[0].d_model, "modes", masks.mode, layers,
                              lambda site: site.ffn_input_device)
        return {"keep": keep, "input": inp, "modes": modes}

    def rule(self, state, layer, proj, taps, *, fused):
        return AtLeast(state["keep"][proj][layer])

    def input_mask(self, state, layer):
        return input_threshold(state["input"][layer], shift=state["modes"][layer])

    def overhead_share(self, spec, model, masks=None):
        from apc.common.projections import mlp_projections

        mods = mlp_projections(model)[0]
        d_model, d_ff = mods["gate"].weight.shape[1], mods["gate"].weight.shape[0]
        return 2.0 * d_ff / (3.0 * d_model * d_ff)  # the bias add on gate and up, per multiply-add of the FFN
