"""Forward hooks that apply FFN interventions to a decoder of any FFN family.

For every FFN site ``l`` (a decoder layer, or a (layer, expert) of a mixture of
experts: :mod:`apc.common.sites`) and configured projection (for a Llama-style
FFN: ``gate``, ``up``, ``down`` = module outputs; ``down_in`` = input of
``down_proj`` via a forward pre-hook), the hooked tensor ``x: (batch, seq,
width)`` (an expert site: ``(n_routed, width)``) is replaced by
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
``random_only``   ``r`` alone: a pure random mask of share ``d``, no threshold
                  (``random_density``; the frontier's random line)
``threshold``     ``|x| >= T_rho[proj][l]`` -- magnitude thresholds calibrated for
                  a kept share rho (``keep_thresholds``); TEAL-style reference
``predicted``     ``C[a_1] | ... | C[a_m]`` -- the ``top_m`` centroids scored
                  highest by ``predictors[proj][l]`` from the MLP input; no
                  oracle, no threshold (like ``centroid_only``)
``neuron_predicted`` the ``density_to_count(d, width)`` neurons scored highest by
                  ``predictors[proj][l]`` from the MLP input (``neuron_density``)
================  =============================================================

The predictor modes read the MLP input (the input of the FFN's first product,
``gate_proj`` for a Llama-style FFN) through a forward pre-hook on that module,
which runs before every hooked projection of its layer.  A predictor is any
callable ``(n, d_model) float32 -> (n, S)``
scores (``S = K`` centroids or ``S = width`` neurons); ``nn.Module`` predictors
are moved to their layer's device.  The pattern ``p`` (``thresholds``) is still
computed in every mode for the ``active_fraction`` statistic.

``C`` for layer ``l`` is ``centroids[proj][l]`` when the set has ``L == n_layers``
rows (per-layer scope) and ``centroids[proj][0]`` when ``L == 1`` (pooled).
The random masks depend on the hook call order and tensor shapes, so a run is
reproducible for the same seed, windows and batch size.

With ``skip_first_position=True`` (a BOS token at column 0), position 0 of
every forward call's input is left untouched in every mode and excluded from
the statistics (an expert site leaves the rows of position-0 tokens untouched).
This assumes full-sequence forwards (no KV-cache decoding).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from apc.common.projections import PROJECTIONS
from apc.common.sites import ffn_sites
from apc.clustering.common import density_to_count, top_n_mask
from apc.clustering.device import exact_matmul
from apc.clustering.distance import nearest
from apc.clustering.product import product_masks

MODES = ("dense", "sparse", "centroid", "centroid_only", "random", "random_only", "threshold", "predicted",
         "neuron_predicted")
_RANDOM_MODES = ("random", "random_only")
_CENTROID_MODES = ("centroid", "centroid_only", "predicted")
_PREDICTOR_MODES = ("predicted", "neuron_predicted")


def nearest_centroid(p: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Nearest centroid per pattern under d(p, c) = |p & ~c| (:func:`apc.clustering.nearest`).

    ``p: (N, W)`` 0/1 float32, ``c: (K, W)`` 0/1 float32 -> ``(N,)`` int64; ties go to the
    lowest index.  On CUDA the product runs in TF32, exact for 0/1 operands.
    """
    with exact_matmul(p.device):
        return nearest(p, c, "activation")[0]


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
        self._mlp_inputs: dict = {}

    def remove(self) -> None:
        """Detach all hooks; idempotent."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._mlp_inputs.clear()

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
    keep_thresholds: Mapping[str, Sequence[float]] | None = None,
    predictors: Mapping[str, Sequence[Callable]] | None = None,
    top_m: int = 1,
    neuron_density: Mapping[str, float] | None = None,
    skip_first_position: bool,
    groups: Mapping[str, int] | None = None,
    assign_weights: Mapping[str, np.ndarray | torch.Tensor | None] | None = None,
) -> Interventions:
    """Install the hooks of ``mode`` on every layer's ``projections``; return the handle.

    thresholds:      ``{proj: [T_layer0, ..., T_layer{n-1}]}`` (all modes but dense).
    centroids:       ``{proj: (L, K, width) bool}``, L in {1, n_layers} (centroid modes, predicted).
    random_density:  ``{proj: d in [0, 1]}`` (random and random_only modes).
    keep_thresholds: ``{proj: [T_rho per layer]}`` (threshold mode).
    predictors:      ``{proj: [one callable per layer]}`` (predicted: K scores; neuron_predicted: width scores).
    top_m:           centroids united per token (predicted mode).
    neuron_density:  ``{proj: d in (0, 1]}`` (neuron_predicted mode).
    groups:          ``{proj: G}`` for product cells, centroids ``(L, G*K, width)`` (default 1).
    assign_weights:  ``{proj: None | (n_layers, width) column scale}``: oracle assignment by least
                     missed weight ``|x|`` (None) or ``|x| * scale[l]`` (``output`` weighting).
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    projections = tuple(projections)
    bad = [p for p in projections if p not in PROJECTIONS]
    if bad:
        raise ValueError(f"unknown projection(s) {bad}; expected among {', '.join(PROJECTIONS)}")
    if len(set(projections)) != len(projections):
        raise ValueError(f"duplicate projections in {list(projections)}")

    layers = ffn_sites(model)
    n_layers = len(layers)
    width = {p: _width(layers[0], p) for p in projections}
    handle = Interventions(mode, projections, width)
    if mode == "dense":
        return handle

    thr = _check_thresholds(thresholds, projections, n_layers, mode)
    cents = _check_centroids(centroids, projections, width, n_layers, layers) if mode in _CENTROID_MODES else {}
    k_rand = _check_density(random_density, projections, width, "random_density") if mode in _RANDOM_MODES else {}
    keep_thr = _check_thresholds(keep_thresholds, projections, n_layers, mode, "keep_thresholds") \
        if mode == "threshold" else {}
    k_neuron = _check_density(neuron_density, projections, width, "neuron_density") \
        if mode == "neuron_predicted" else {}
    preds = _check_predictors(predictors, projections, layers, mode, cents, width, top_m) \
        if mode in _PREDICTOR_MODES else {}
    n_groups = {p: int((groups or {}).get(p, 1)) for p in projections}
    for p in projections:
        if n_groups[p] < 1 or (p in cents and cents[p][0].shape[0] % n_groups[p]):
            raise ValueError(f"groups[{p!r}] = {n_groups[p]} must be >= 1 and divide the centroid rows")
    scales = _check_scales(assign_weights, projections, width, n_layers, layers)
    generators: dict[torch.device, torch.Generator] = {}
    mlp_in: dict[int, torch.Tensor] = {}
    handle._mlp_inputs = mlp_in

    try:
        if mode in _PREDICTOR_MODES:
            for l, site in enumerate(layers):
                handle._handles.append(site.on_ffn_input(lambda x, l=l: mlp_in.__setitem__(l, x)))
        for proj in projections:
            for l, site in enumerate(layers):
                dev = site.device(proj)
                if mode in _RANDOM_MODES and dev not in generators:
                    generators[dev] = torch.Generator(device=dev).manual_seed(int(seed))
                choose = _chooser(mode, l, mlp_in, cents=cents.get(proj, [None] * n_layers)[l],
                                  k=k_rand.get(proj), gen=generators.get(dev),
                                  keep_threshold=keep_thr.get(proj, [None] * n_layers)[l],
                                  predictor=preds.get(proj, [None] * n_layers)[l], top_m=top_m,
                                  k_neuron=k_neuron.get(proj), n_groups=n_groups[proj], scale=scales[proj][l])
                fn = _make_apply(handle, proj, thr[proj][l], choose, skip_first_position and site.positional)
                handle._handles.append(site.replace(proj, fn, skip_first_position))
    except BaseException:
        handle.remove()
        raise
    return handle


def _chooser(mode, layer, mlp_in, *, cents, k, gen, keep_threshold, predictor, top_m, k_neuron, n_groups=1,
             scale=False):
    """``(flat x (N, W), pattern p (N, W) bool) -> keep (N, W) bool`` for one (layer, projection)."""

    def scores(n_rows: int) -> torch.Tensor:
        h = mlp_in[layer]
        h = h.reshape(-1, h.shape[-1])
        if h.shape[0] != n_rows:
            raise RuntimeError(f"layer {layer}: MLP input has {h.shape[0]} positions, the hooked tensor {n_rows}")
        return predictor(h.float())

    def choose(flat: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if mode == "sparse":
            return p
        if mode in ("centroid", "centroid_only"):
            if scale is False:  # oracle by the pattern: nearest centroid (per group for product cells)
                m = product_masks(p.float(), cents, n_groups) if n_groups > 1 else \
                    cents.index_select(0, nearest_centroid(p.float(), cents)) > 0.5
            else:  # oracle by least missed weight |x| (or |x| * column scale)
                w = flat.abs().float() if scale is None else flat.abs().float() * scale
                m = product_masks(w, cents, n_groups)
            return m if mode == "centroid_only" else p & m
        if mode in _RANDOM_MODES:
            noise = torch.rand(flat.shape, generator=gen, device=flat.device)
            r = torch.zeros_like(p).scatter_(1, noise.topk(k, dim=1).indices, True)
            return r & p if mode == "random" else r
        if mode == "threshold":
            return flat.abs().float() >= keep_threshold
        s = scores(flat.shape[0])
        if mode == "predicted":
            ids = s.argmax(dim=1, keepdim=True) if top_m == 1 else s.topk(top_m, dim=1).indices
            return (cents[ids] > 0.5).any(dim=1)
        return top_n_mask(s, k_neuron)  # neuron_predicted

    return choose


def _make_apply(handle, proj, threshold, choose, skip_first):
    """Build ``x -> masked x`` for one (layer, projection)."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        handle.calls[proj] += 1
        w = x.shape[-1]
        flat = x.reshape(-1, w)
        p = flat.abs().float() >= threshold
        keep = choose(flat, p).view(x.shape)
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


def _width(site, proj: str) -> int:
    return site.width(proj)


def _check_thresholds(thresholds, projections, n_layers, mode, name="thresholds") -> dict[str, list[float]]:
    out = {}
    for p in projections:
        if thresholds is None or p not in thresholds:
            raise ValueError(f"mode {mode!r} needs {name} for projection {p!r} (one float per layer)")
        t = [float(v) for v in thresholds[p]]
        if len(t) != n_layers:
            raise ValueError(f"{name}[{p!r}] has {len(t)} values, expected one per layer ({n_layers})")
        if not all(np.isfinite(v) and v >= 0 for v in t):
            raise ValueError(f"{name}[{p!r}] must be finite and >= 0, got {t}")
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
        for l, site in enumerate(layers):
            src = l if c.shape[0] == n_layers else 0
            dev = site.device(p)
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
            dev = lambda l: layers[l].device(p)
            out[p] = [s[l].to(dev(l)) for l in range(n_layers)]
    return out


def _check_density(density, projections, width, name) -> dict[str, int]:
    """Per projection, the exact number of ones per token: round(d * width)."""
    out = {}
    for p in projections:
        if density is None or p not in density:
            raise ValueError(f"this mode needs {name} for projection {p!r}")
        d = float(density[p])
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"{name}[{p!r}] must be in [0, 1], got {d}")
        out[p] = int(round(d * width[p])) if name == "random_density" else density_to_count(d, width[p])
    return out


def _check_predictors(predictors, projections, layers, mode, cents, width, top_m) -> dict[str, list]:
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
