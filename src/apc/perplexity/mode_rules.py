"""The mask rules of the built-in modes of :mod:`apc.perplexity.masking` (the study's perplexity modes and the
cluster, random and neuron-predictor masks that the cluster lines run).

================  =============================================================
mode              keep
================  =============================================================
``sparse``        ``p``,  with ``p = |x| >= T[proj][l]`` (compared in float32)
``centroid``      ``p & C[a]``  -- ``a`` = nearest centroid of the token's own
                  oracle pattern ``p`` (:func:`nearest_centroid`)
``centroid_only`` ``C[a]``  -- no threshold: every neuron inside the centroid is
                  computed exactly; ``a`` still comes from the oracle ``p``
``random``        ``p & r``  -- ``r`` has exactly ``round(d * width)`` ones per
                  token, chosen uniformly (top-k of uniform noise drawn from a
                  ``torch.Generator`` seeded with ``seed``, one per device)
``random_only``   ``r`` alone: a pure random mask of share ``d``, no threshold
``predicted``     ``C[a_1] | ... | C[a_m]`` -- the ``top_m`` centroids scored
                  highest by ``predictors[proj][l]`` from the MLP input
``neuron_predicted`` the ``density_to_count(d, width)`` neurons scored highest by
                  ``predictors[proj][l]`` from the MLP input (``neuron_density``)
================  =============================================================

``C`` for layer ``l`` is ``centroids[proj][l]`` when the set has ``L == n_layers`` rows (per-layer scope) and
``centroids[proj][0]`` when ``L == 1`` (pooled).  A predictor is any callable ``(n, d_model) float32 -> (n, S)``
scores (``S = K`` centroids or ``S = width`` neurons), reading the MLP input through a forward pre-hook;
``nn.Module`` predictors are moved to their layer's device.  The random masks depend on the hook call order and
tensor shapes, so a run is reproducible for the same seed, windows and batch size.
"""

from __future__ import annotations

import torch

from apc.clustering.common import top_n_mask
from apc.clustering.distance import nearest
from apc.clustering.product import product_masks
from apc.common.device import exact_matmul
from apc.lines.base import MaskRule
from apc.perplexity import fused as _fused
from apc.perplexity.maskargs import check_centroids, check_density, check_predictors, check_scales

__all__ = ["MODES", "ModeRule", "builtin_rules", "nearest_centroid"]

#: the built-in modes; any other mode is a line's (:mod:`apc.lines`), whose mask rules decide
MODES = ("dense", "sparse", "centroid", "centroid_only", "random", "random_only", "predicted", "neuron_predicted")
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


class ModeRule(MaskRule):
    """The mask rule of a built-in mode (:data:`MODES`) in one (layer, projection).

    Cluster modes also set ``ids`` (``(N, m)`` int64 assigned centroid ids, or None) and ``density`` (``(K,)``
    float32 centroid densities) for the batch view."""

    def __init__(self, mode, layer, taps, *, cents, k, gen, predictor, top_m, k_neuron, n_groups=1, scale=False,
                 fused=False):
        self.mode, self.layer, self.taps, self.cents, self.k, self.gen = mode, layer, taps, cents, k, gen
        self.predictor, self.top_m, self.k_neuron, self.n_groups, self.scale = predictor, top_m, k_neuron, n_groups, scale
        self.fused = fused
        self.density = cents.density() if cents is not None else None

    def scores(self, n_rows: int) -> torch.Tensor:
        h = self.taps[self.layer]
        h = h.reshape(-1, h.shape[-1])
        if h.shape[0] != n_rows:
            raise RuntimeError(f"layer {self.layer}: MLP input has {h.shape[0]} positions, the hooked tensor {n_rows}")
        return self.predictor(h.float())

    def random_keep(self, flat: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(flat.shape, generator=self.gen, device=flat.device)
        if self.fused and 0 < self.k < flat.shape[1]:
            r = _fused.top_n_float(noise, self.k)  # ties at the k-th value from the lowest position
            if r is not None:
                return r
        return torch.zeros(flat.shape, dtype=torch.bool, device=flat.device).scatter_(
            1, noise.topk(self.k, dim=1).indices, True)

    def weighted_keep(self, p: torch.Tensor | None, absx: torch.Tensor | None) -> torch.Tensor:
        """Centroid masks of product cells (by pattern) and of the weighted oracle (by |x|)."""
        if self.scale is False:  # product cells: nearest centroid per group
            return product_masks(p.float(), self.cents.float(), self.n_groups)
        w = absx if self.scale is None else absx * self.scale  # oracle by least missed weight |x| (or |x| * scale)
        return product_masks(w, self.cents.float(), self.n_groups)

    def keep(self, flat, p, absx):
        mode, cents = self.mode, self.cents
        self.ids = None
        if mode == "sparse":
            return p
        if mode in ("centroid", "centroid_only"):
            if self.scale is False and self.n_groups == 1:  # oracle by the pattern: nearest centroid
                ids = nearest_centroid(p.float(), cents.float())
                self.ids = ids[:, None]
                m = cents.rows.index_select(0, ids)
            else:
                m = self.weighted_keep(p, absx)
            return m if mode == "centroid_only" else p & m
        if mode in _RANDOM_MODES:
            r = self.random_keep(flat)
            return r & p if mode == "random" else r
        s = self.scores(flat.shape[0])
        if mode == "predicted":
            ids = s.argmax(dim=1, keepdim=True) if self.top_m == 1 else s.topk(self.top_m, dim=1).indices
            self.ids = ids
            return cents.rows[ids].any(dim=1)
        return top_n_mask(s, self.k_neuron)  # neuron_predicted

    def spec(self, flat, threshold):
        mode, cents = self.mode, self.cents
        self.ids = None
        if mode == "sparse":
            return {"kind": "pattern"}
        if mode in _RANDOM_MODES:
            return {"kind": "keep", "keep": self.random_keep(flat), "and_pattern": mode == "random"}
        if mode in ("centroid", "centroid_only"):
            if self.scale is False and self.n_groups == 1:
                self.ids = cents.nearest(flat, threshold)[:, None]
                return {"kind": "centroids", "centroids": cents.rows, "ids": self.ids,
                        "and_pattern": mode == "centroid"}
            absx = flat.abs().float()
            m = self.weighted_keep(absx >= threshold, absx)
            return {"kind": "keep", "keep": m, "and_pattern": mode == "centroid"}
        s = self.scores(flat.shape[0])
        if mode == "predicted":
            self.ids = s.argmax(dim=1, keepdim=True) if self.top_m == 1 else s.topk(self.top_m, dim=1).indices
            return {"kind": "centroids", "centroids": cents.rows, "ids": self.ids}
        return {"kind": "top_n", "score": s, "k": self.k_neuron}


def builtin_rules(masks, layers, width, n_layers, handle, taps, use_fused) -> dict:
    """The mask rules of a built-in mode (:data:`MODES`) per projection and layer."""
    mode, projections = masks.mode, masks.projections
    cents = check_centroids(masks.centroids, projections, width, n_layers, layers) if mode in _CENTROID_MODES else {}
    k_rand = check_density(masks.random_density, projections, width, "random_density") if mode in _RANDOM_MODES else {}
    k_neuron = check_density(masks.neuron_density, projections, width, "neuron_density") \
        if mode == "neuron_predicted" else {}
    preds = check_predictors(masks.predictors, projections, layers, mode, cents, width, masks.top_m) \
        if mode in _PREDICTOR_MODES else {}
    n_groups = {p: int((masks.groups or {}).get(p, 1)) for p in projections}
    for p in projections:
        if n_groups[p] < 1 or (p in cents and cents[p][0].shape[0] % n_groups[p]):
            raise ValueError(f"groups[{p!r}] = {n_groups[p]} must be >= 1 and divide the centroid rows")
    scales = check_scales(masks.assign_weights, projections, width, n_layers, layers)
    generators: dict[torch.device, torch.Generator] = {}
    if mode in _PREDICTOR_MODES:
        for l, site in enumerate(layers):
            handle._handles.append(site.on_ffn_input(lambda x, l=l: taps.__setitem__(l, x)))
    rules = {}
    for proj in projections:
        rules[proj] = []
        for l, site in enumerate(layers):
            dev = site.device(proj)
            if mode in _RANDOM_MODES and dev not in generators:
                generators[dev] = torch.Generator(device=dev).manual_seed(int(masks.seed))
            rules[proj].append(ModeRule(mode, l, taps, cents=cents.get(proj, [None] * n_layers)[l],
                                        k=k_rand.get(proj), gen=generators.get(dev),
                                        predictor=preds.get(proj, [None] * n_layers)[l], top_m=masks.top_m,
                                        k_neuron=k_neuron.get(proj), n_groups=n_groups[proj], scale=scales[proj][l],
                                        fused=use_fused(dev)))
            rules[proj][-1].use_fused = use_fused(dev)
    return rules
