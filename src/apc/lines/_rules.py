"""Mask rules and input masks that several lines share (a private module: not a line)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from apc.lines.base import MaskRule

if TYPE_CHECKING:
    import torch

__all__ = ["AtLeast", "Keep", "TopN", "calibrated", "input_threshold", "share_label", "tap_tensor"]


def share_label(share: float) -> str:
    """The calibration key of a kept share (:func:`apc.common.layout.density_label`)."""
    from apc.common.layout import density_label

    return density_label(share)


def calibrated(calibration: dict | None, share: float, spec) -> object:
    """The calibration entry of ``spec``'s line at ``share``; one clear error when it is missing."""
    label = share_label(share)
    if not calibration or label not in calibration:
        raise ValueError(f"no calibration of line {spec.line!r} at kept share {share}; rerun its calibrate_line job")
    return calibration[label]


def tap_tensor(taps: dict, layer: int, n_rows: int, what: str) -> torch.Tensor:
    """``(n_rows, width)``: what the line tapped in ``layer`` before this hook, flattened; one clear error when
    the positions disagree."""
    t = taps[layer]
    t = t.reshape(-1, t.shape[-1])
    if t.shape[0] != n_rows:
        raise RuntimeError(f"layer {layer}: {what} has {t.shape[0]} positions, the hooked tensor {n_rows}")
    return t


class AtLeast(MaskRule):
    """keep = ``|x| (* scale) >= threshold`` (the fused route's ``at_least`` kind when there is no scale)."""

    def __init__(self, threshold: float, scale: torch.Tensor | None = None):
        self.threshold, self.scale = threshold, scale

    def keep(self, flat, p, absx):
        return (absx if self.scale is None else absx * self.scale) >= self.threshold

    def spec(self, flat, threshold):
        if self.scale is None:
            return {"kind": "at_least", "keep_threshold": self.threshold}
        return {"kind": "keep", "keep": flat.abs().float() * self.scale >= self.threshold}


class TopN(MaskRule):
    """keep = the ``k`` largest ``|x|`` per row."""

    def __init__(self, k: int):
        self.k_neuron = k

    def keep(self, flat, p, absx):
        from apc.clustering.common import top_n_mask

        return top_n_mask(absx, self.k_neuron)

    def spec(self, flat, threshold):
        return {"kind": "top_n", "score": flat.abs().float(), "k": self.k_neuron}


class Keep(MaskRule):
    """keep = ``score(layer tap) >= threshold``: a mask decided from what the line tapped (e.g. the gate)."""

    def __init__(self, taps: dict, layer: int, score: Callable[[torch.Tensor], torch.Tensor], threshold: float,
                 what: str):
        self.taps, self.layer, self.score, self.threshold, self.what = taps, layer, score, threshold, what

    def keep(self, flat, p, absx):
        return self.score(tap_tensor(self.taps, self.layer, flat.shape[0], self.what)) >= self.threshold

    def spec(self, flat, threshold):
        return {"kind": "keep", "keep": self.keep(flat, None, None)}


def input_threshold(threshold: float, scale: torch.Tensor | None = None, shift: torch.Tensor | None = None) -> Callable:
    """``h -> (h masked, keep)``: ``h`` zeroed where ``|h - shift| (* scale) < threshold``; with a ``shift`` the
    masked input is ``shift + (h - shift) masked`` (the shift's product is a bias)."""

    def keep_in(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = h if shift is None else h - shift.to(h.dtype)
        a = c.abs().float()
        keep = (a if scale is None else a * scale) >= threshold
        out = c.masked_fill(~keep, 0)
        return (out if shift is None else out + shift.to(h.dtype)), keep

    return keep_in
