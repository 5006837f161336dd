"""The arguments of the FFN interventions (:mod:`apc.perplexity.masking`), and their checks.

:class:`Masks` holds everything one installation needs besides the model: the perplexity mode, the
masked projections, and the mode's thresholds, centroids, predictors, shares, scales or rotations.
The ``check_*`` functions validate each argument against the model once, with one clear message
naming the argument, and put it on the device of its layer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from apc.clustering.lowp import ExactProduct, fp8_supported
from apc.lines._checks import (check_density, check_rotations, check_share, check_thresholds,  # noqa: F401 (re-exported)
                               check_vectors)
from apc.perplexity import fused as _fused

__all__ = ["CentroidSet", "Masks", "check_centroids", "check_density", "check_predictors", "check_scales",
           "check_thresholds", "site_width"]


@dataclass(frozen=True, eq=False)
class Masks:
    """What the interventions of one mode apply (``line``: the frontier line they come from, if any).

    thresholds:      ``{proj: [T_layer0, ..., T_layer{n-1}]}`` (all modes but dense).
    centroids:       ``{proj: (L, K, width) bool}``, L in {1, n_layers} (centroid modes, predicted).
    random_density:  ``{proj: d in [0, 1]}`` (random and random_only modes); ``seed`` seeds them.
    keep_thresholds: ``{proj: [T_rho per layer]}`` (threshold mode; teal, wina: ``down_in``).
    predictors:      ``{proj: [one callable per layer]}`` (predicted: K scores; neuron_predicted: width scores).
    top_m:           centroids united per token (predicted mode).
    neuron_density:  ``{proj: d in (0, 1]}`` (neuron_predicted mode).
    groups:          ``{proj: G}`` for product cells, centroids ``(L, G*K, width)`` (default 1).
    assign_weights:  ``{proj: None | (n_layers, width) column scale}``: oracle assignment by least
                     missed weight ``|x|`` (None) or ``|x| * scale[l]`` (``output`` weighting).
    gate_thresholds: ``{"down_in": [T per layer]}`` on ``|act(gate output)|`` (cats mode).
    input_thresholds: ``[T_in per layer]`` on the MLP input entering gate_proj and up_proj (teal, wina).
    input_scale:     ``[(d_model,) per layer]``: the MLP input's score ``|h| * input_scale[l]`` (wina).
    mid_scale:       ``[(d_ff,) per layer]``: ``down_in``'s score ``|x| * mid_scale[l]`` (wina).
    rotations:       ``[(d_model, d_model) orthogonal Q per layer]`` (larosa).
    input_share:     kept share of the rotated MLP input per token (larosa).
    keep_share:      kept share of ``down_in`` (larosa: per token; griffin: per sequence).
    prompt:          positions of each sequence that run dense and choose the mask (griffin).
    arrays:          a line's own arrays (:mod:`apc.lines`), read by its mask rules.
    """

    mode: str
    projections: tuple = ()
    thresholds: Mapping[str, Sequence[float]] | None = None
    centroids: Mapping[str, torch.Tensor | np.ndarray] | None = None
    random_density: Mapping[str, float] | None = None
    seed: int = 0
    keep_thresholds: Mapping[str, Sequence[float]] | None = None
    predictors: Mapping[str, Sequence[Callable]] | None = None
    top_m: int = 1
    neuron_density: Mapping[str, float] | None = None
    groups: Mapping[str, int] | None = None
    assign_weights: Mapping[str, np.ndarray | torch.Tensor | None] | None = None
    gate_thresholds: Mapping[str, Sequence[float]] | None = None
    input_thresholds: Sequence[float] | None = None
    input_scale: Sequence | None = None
    mid_scale: Sequence | None = None
    rotations: Sequence | None = None
    input_share: float | None = None
    keep_share: float | None = None
    prompt: int | None = None
    line: object | None = None  # an apc.lines.LineSpec
    arrays: Mapping | None = None

    def __post_init__(self):
        object.__setattr__(self, "projections", tuple(self.projections))


def site_width(site, proj: str) -> int:
    """Width of ``proj`` at one FFN site."""
    return site.width(proj)


class CentroidSet:
    """One ``(K, W)`` centroid set on one device: its rows as bool, and on first use its float32 copy
    (torch route) and the one-byte operand of the exact assignment product (fused route)."""

    def __init__(self, rows: torch.Tensor):
        self.rows = rows
        self.shape = rows.shape
        self._float: torch.Tensor | None = None
        self._product: tuple | None = None

    def float(self) -> torch.Tensor:
        if self._float is None:
            self._float = self.rows.to(torch.float32)
        return self._float

    def density(self) -> torch.Tensor:
        """``(K,)`` float32: the share of ones per centroid (no float32 copy kept for it)."""
        return (self._float if self._float is not None else self.rows.to(torch.float32)).mean(dim=1)

    def nearest(self, x: torch.Tensor, threshold: float) -> torch.Tensor:
        """``(N,)`` int64: the nearest centroid (:func:`nearest_centroid`) of the pattern ``|x| >= threshold``
        of ``x: (N, W)``, through the exact one-byte product (fp8 where the device has it, else int8)."""
        if self._product is None:
            dev = self.rows.device
            prod = ExactProduct("fp8" if fp8_supported(dev) else "int8", dev, self.shape[1])
            self._product = (prod, prod.prepare_centroids(self.rows))
        prod, c = self._product
        n = x.shape[0]
        a = prod.view(_fused.pattern_operand(x, threshold, prod.one, prod.padded_rows(n), prod.cols))
        return prod.overlap(a, c, n, self.shape[0]).max(dim=1).indices


def check_centroids(centroids, projections, width, n_layers, layers) -> dict[str, list[CentroidSet]]:
    """Validate and move centroid sets once: per projection, one (K, W) set per layer (shared when pooled)."""
    out = {}
    for p in projections:
        if centroids is None or p not in centroids:
            raise ValueError(f"centroid modes need centroids for projection {p!r}: a (L, K, width) bool array")
        c = torch.as_tensor(centroids[p])
        if c.dim() != 3 or c.shape[1] < 1:
            raise ValueError(f"centroids[{p!r}] must have shape (L, K, width) with K >= 1, got {tuple(c.shape)}")
        if c.shape[2] != width[p]:
            raise ValueError(f"centroids[{p!r}] have width {c.shape[2]}, but the model's {p} width is "
                             f"{width[p]} (expected {width[p]}, got {c.shape[2]}): centroids from another model or width")
        if c.shape[0] not in (1, n_layers):
            raise ValueError(f"centroids[{p!r}] have L={c.shape[0]} sets; expected 1 (pooled) or "
                             f"{n_layers} (one per layer)")
        if c.dtype != torch.bool:
            if not bool(((c == 0) | (c == 1)).all()):
                raise ValueError(f"centroids[{p!r}] must be binary (bool or 0/1)")
            c = c != 0
        cache: dict = {}
        per_layer = []
        for l, site in enumerate(layers):
            src = l if c.shape[0] == n_layers else 0
            dev = site.device(p)
            if (src, dev) not in cache:
                cache[(src, dev)] = CentroidSet(c[src].to(device=dev).contiguous())
            per_layer.append(cache[(src, dev)])
        out[p] = per_layer
    return out


def check_scales(assign_weights, projections, width, n_layers, layers) -> dict[str, list]:
    """Per projection and layer: False (assign by pattern), None (by |x|) or a (width,) float32 scale."""
    out = {}
    for p in projections:
        if assign_weights is None or p not in assign_weights:
            out[p] = [False] * n_layers
        elif assign_weights[p] is None:
            out[p] = [None] * n_layers
        else:
            s = torch.as_tensor(np.asarray(assign_weights[p]), dtype=torch.float32)
            if tuple(s.shape) != (n_layers, width[p]):
                raise ValueError(f"assign_weights[{p!r}] must have shape ({n_layers}, {width[p]}), got {tuple(s.shape)}")
            dev = lambda l: layers[l].device(p)
            out[p] = [s[l].to(dev(l)) for l in range(n_layers)]
    return out


def check_predictors(predictors, projections, layers, mode, cents, width, top_m) -> dict[str, list]:
    """Per projection, one predictor per layer, sizes checked against the model and the centroids."""
    out = {}
    for p in projections:
        if predictors is None or p not in predictors:
            raise ValueError(f"mode {mode!r} needs predictors for projection {p!r} (one per layer)")
        per_layer = list(predictors[p])
        if len(per_layer) != len(layers):
            raise ValueError(f"predictors[{p!r}] has {len(per_layer)} entries, expected one per layer ({len(layers)})")
        for l, (pred, site) in enumerate(zip(per_layer, layers)):
            d_model = site.d_model
            if getattr(pred, "d_model", d_model) != d_model:
                raise ValueError(f"predictors[{p!r}][{l}] takes inputs of width {pred.d_model}, the model's "
                                 f"MLP input has width {d_model}")
            dev = site.ffn_input_device
            if isinstance(pred, nn.Module):
                pred.to(dev).eval()
            n_out = cents[p][l].shape[0] if mode == "predicted" else width[p]
            with torch.no_grad():
                got = pred(torch.zeros(1, d_model, device=dev)).shape[-1]
            if got != n_out:
                what = "centroids in the set" if mode == "predicted" else f"neurons of {p}"
                raise ValueError(f"predictors[{p!r}][{l}] scores {got} outputs, but there are {n_out} {what}")
        if mode == "predicted" and not 1 <= int(top_m) <= min(c.shape[0] for c in cents[p]):
            raise ValueError(f"top_m must lie in [1, K], got {top_m}")
        out[p] = per_layer
    return out
