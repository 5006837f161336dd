"""Forward hooks that apply FFN interventions to a gated-MLP decoder.

For every decoder layer ``l`` and configured projection (``gate``, ``up``,
``down`` = module outputs; ``down_in`` = input of ``down_proj`` via a forward
pre-hook), the hooked tensor ``x: (batch, seq, width)`` is replaced by
``x.masked_fill(~keep, 0)`` where ``keep: (batch, seq, width) bool`` is

================  =============================================================
mode              keep
================  =============================================================
``dense``         (no hooks installed)
``sparse``        ``p``,  with ``p = |x| >= T[proj][l]`` (compared in float32)
``centroid``      ``p & C[a]``  -- ``a`` = nearest centroid of the token's own
                  oracle pattern ``p`` (:func:`nearest_centroid`)
``centroid_only`` ``C[a]``  -- no threshold: every neuron inside the centroid is
                  computed exactly; ``a`` still comes from the oracle ``p``
``random``        ``p & r``  -- ``r`` has exactly ``round(d * width)`` ones per
                  token, chosen uniformly (top-k of uniform noise drawn from a
                  ``torch.Generator`` seeded with ``seed``, one per device)
================  =============================================================

``C`` for layer ``l`` is ``centroids[proj][l]`` when the set has ``L == n_layers``
rows (per-layer scope) and ``centroids[proj][0]`` when ``L == 1`` (pooled).
A product cell (``groups[proj]`` = G > 1, :mod:`apc.clustering.product`) stores
``G*K`` rows laid out by group; ``C[a]`` is then the union of the nearest
centroid of each group.  With ``assign_weights[proj]`` the oracle picks the
centroid that misses the least weight ``|x| * scale[l]`` (``apc_weighted``'s
distance) instead of the one nearest to ``p``.
The random masks depend on the hook call order and tensor shapes, so a run is
reproducible for the same seed, windows and batch size.

With ``skip_first_position=True`` (a BOS token at column 0), position 0 of
every forward call's input is left untouched in every mode and excluded from
the statistics.  This assumes full-sequence forwards (no KV-cache decoding).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .arch import PROJECTIONS, mlp_projections
from .clustering.device import exact_matmul
from .clustering.product import product_masks

MODES = ("dense", "sparse", "centroid", "centroid_only", "random")
_CENTROID_MODES = ("centroid", "centroid_only")


def nearest_centroid(p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Nearest centroid per pattern under d(p, c) = |p & ~c|.

    ``p: (N, W)`` 0/1 float32, ``c: (K, W)`` 0/1 float32 -> ``(N,)`` int64.
    d = rowsum(p) - p @ c.T, so the argmin of d is the argmax of one matmul;
    ties go to the lowest index.  Exact while W < 2**24 (integer counts in fp32; on
    CUDA the product runs in TF32, which represents 0/1 exactly and accumulates in fp32).
    """
    with exact_matmul(p.device):  # TF32 on CUDA: exact for 0/1 operands, fp32 accumulation
        return (p @ c.T).argmax(dim=1)


class Interventions:
    """Handle returned by :func:`install_interventions`.

    ``remove()`` detaches every hook (also done on leaving a ``with`` block).
    ``calls[proj]`` counts hook calls; ``stats()`` and ``kept_fraction()``
    report what the masks kept over all intervened positions.
    """

    def __init__(self, mode: str, projections: Sequence[str], width: Mapping[str, int]):
        self.mode = mode
        self.projections = tuple(projections)
        self.width = dict(width)
        self.calls = {p: 0 for p in self.projections}
        self._kept = {p: 0 for p in self.projections}  # device tensors after the first call
        self._active = {p: 0 for p in self.projections}
        self._total = {p: 0 for p in self.projections}  # intervened positions * width
        self._handles: list = []

    def remove(self) -> None:
        """Detach all hooks; idempotent."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "Interventions":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def stats(self) -> dict[str, dict]:
        """Per projection: ``kept_fraction`` (share of neurons the mask kept),
        ``active_fraction`` (share with |x| >= T), ``calls``, ``elements``
        (intervened positions x width).  Dense: kept = active = 1.0.
        Fractions are NaN for a projection whose hooks never ran."""
        out = {}
        for p in self.projections:
            total = self._total[p]
            if self.mode == "dense":
                kept = active = 1.0
            elif total == 0:
                kept = active = float("nan")
            else:
                kept = float(self._kept[p]) / total
                active = float(self._active[p]) / total
            out[p] = {"kept_fraction": kept, "active_fraction": active,
                      "calls": self.calls[p], "elements": total}
        return out

    def kept_fraction(self) -> dict[str, float]:
        """``{projection: kept share of neurons over all intervened positions}``."""
        return {p: s["kept_fraction"] for p, s in self.stats().items()}


def install_interventions(
    model: nn.Module,
    mode: str,
    *,
    projections: Sequence[str] = (),
    thresholds: Mapping[str, Sequence[float]] | None = None,
    centroids: Mapping[str, torch.Tensor | np.ndarray] | None = None,
    random_density: Mapping[str, float] | None = None,
    seed: int = 0,
    skip_first_position: bool,
    groups: Mapping[str, int] | None = None,
    assign_weights: Mapping[str, np.ndarray | torch.Tensor | None] | None = None,
) -> Interventions:
    """Install the hooks of ``mode`` on every layer's ``projections``; return the handle.

    thresholds:     ``{proj: [T_layer0, ..., T_layer{n-1}]}`` (all modes but dense).
    centroids:      ``{proj: (L, K, width) bool}``, L in {1, n_layers} (centroid modes);
                    ``(L, G*K, width)`` for a product cell.
    random_density: ``{proj: d in [0, 1]}`` (random mode).
    groups:         ``{proj: G}`` for product cells (default 1).
    assign_weights: ``{proj: None | (n_layers, width) column scale}``: assign by least missed
                    weight ``|x|`` (None) or ``|x| * scale[l]`` (``output`` weighting).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    projections = tuple(projections)
    bad = [p for p in projections if p not in PROJECTIONS]
    if bad:
        raise ValueError(f"unknown projection(s) {bad}; expected among {', '.join(PROJECTIONS)}")
    if len(set(projections)) != len(projections):
        raise ValueError(f"duplicate projections in {list(projections)}")

    layers = mlp_projections(model)
    n_layers = len(layers)
    width = {p: _width(layers[0], p) for p in projections}
    handle = Interventions(mode, projections, width)
    if mode == "dense":
        return handle

    thr = _check_thresholds(thresholds, projections, n_layers, mode)
    cents = _check_centroids(centroids, projections, width, n_layers, layers) if mode in _CENTROID_MODES else {}
    n_groups = {p: int((groups or {}).get(p, 1)) for p in projections}
    for p in projections:
        if n_groups[p] < 1 or (p in cents and cents[p][0].shape[0] % n_groups[p]):
            raise ValueError(f"groups[{p!r}] = {n_groups[p]} must be >= 1 and divide the centroid rows")
    scales = _check_scales(assign_weights, projections, width, n_layers, layers)
    k_rand = _check_density(random_density, projections, width) if mode == "random" else {}
    generators: dict[torch.device, torch.Generator] = {}

    for proj in projections:
        for l, mods in enumerate(layers):
            module = mods["down" if proj == "down_in" else proj]
            dev = module.weight.device
            gen = None
            if mode == "random":
                if dev not in generators:
                    generators[dev] = torch.Generator(device=dev).manual_seed(int(seed))
                gen = generators[dev]
            fn = _make_apply(handle, mode, proj, thr[proj][l], cents.get(proj, [None] * n_layers)[l],
                             k_rand.get(proj), gen, skip_first_position, n_groups[proj], scales[proj][l])
            if proj == "down_in":
                h = module.register_forward_pre_hook(lambda m, args, fn=fn: (fn(args[0]),) + tuple(args[1:]))
            else:
                h = module.register_forward_hook(lambda m, args, out, fn=fn: fn(out))
            handle._handles.append(h)
    return handle


def _make_apply(handle, mode, proj, threshold, cents, k, gen, skip_first, n_groups=1, scale=False):
    """Build ``x -> masked x`` for one (layer, projection)."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        handle.calls[proj] += 1
        w = x.shape[-1]
        flat = x.reshape(-1, w)
        p = flat.abs().float() >= threshold
        if mode == "sparse":
            keep = p
        elif mode in _CENTROID_MODES:
            if scale is False:
                score = p.float()
            else:
                score = flat.abs().float() if scale is None else flat.abs().float() * scale
            m = product_masks(score, cents, n_groups)
            keep = m if mode == "centroid_only" else p & m
        else:  # random
            noise = torch.rand(flat.shape, generator=gen, device=flat.device)
            r = torch.zeros_like(p).scatter_(1, noise.topk(k, dim=1).indices, True)
            keep = p & r
        keep = keep.view(x.shape)
        p = p.view(x.shape)
        if skip_first and x.dim() >= 2:
            keep_s, p_s = keep[..., 1:, :], p[..., 1:, :]
            keep = keep.clone()
            keep[..., 0, :] = True
        else:
            keep_s, p_s = keep, p
        handle._kept[proj] = handle._kept[proj] + keep_s.sum()
        handle._active[proj] = handle._active[proj] + p_s.sum()
        handle._total[proj] += keep_s.numel()
        return x.masked_fill(~keep, 0)

    return apply


def _width(mods: dict, proj: str) -> int:
    return mods["down"].in_features if proj == "down_in" else mods[proj].out_features


def _check_thresholds(thresholds, projections, n_layers, mode) -> dict[str, list[float]]:
    out = {}
    for p in projections:
        if thresholds is None or p not in thresholds:
            raise ValueError(f"mode {mode!r} needs thresholds for projection {p!r} (one float per layer)")
        t = [float(v) for v in thresholds[p]]
        if len(t) != n_layers:
            raise ValueError(f"thresholds[{p!r}] has {len(t)} values, expected one per layer ({n_layers})")
        if not all(np.isfinite(v) and v >= 0 for v in t):
            raise ValueError(f"thresholds[{p!r}] must be finite and >= 0, got {t}")
        out[p] = t
    return out


def _check_centroids(centroids, projections, width, n_layers, layers) -> dict[str, list[torch.Tensor]]:
    """Validate and move centroid sets once: per projection, one (K, W) float32 tensor per layer."""
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
        for l, mods in enumerate(layers):
            src = l if c.shape[0] == n_layers else 0
            dev = mods["down" if p == "down_in" else p].weight.device
            if (src, dev) not in cache:
                cache[(src, dev)] = c[src].to(device=dev, dtype=torch.float32).contiguous()
            per_layer.append(cache[(src, dev)])
        out[p] = per_layer
    return out


def _check_scales(assign_weights, projections, width, n_layers, layers) -> dict[str, list]:
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
            dev = lambda l: layers[l]["down" if p == "down_in" else p].weight.device
            out[p] = [s[l].to(dev(l)) for l in range(n_layers)]
    return out


def _check_density(density, projections, width) -> dict[str, int]:
    """Per projection, the exact number of ones per token: round(d * width)."""
    out = {}
    for p in projections:
        if density is None or p not in density:
            raise ValueError(f"mode 'random' needs random_density for projection {p!r}")
        d = float(density[p])
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"random_density[{p!r}] must be in [0, 1], got {d}")
        out[p] = int(round(d * width[p]))
    return out
