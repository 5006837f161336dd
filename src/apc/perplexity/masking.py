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
                  a kept share rho (``keep_thresholds``) on the masked tensor itself
``cats``          ``|act(g)| >= T[l]`` on ``down_in``, ``g`` the ``gate_proj`` output of the
                  same token (``gate_thresholds``; CATS)
``teal``          ``|x| >= T_mid[l]`` on ``down_in`` (``keep_thresholds``), and the MLP input
                  entering ``gate_proj``/``up_proj`` zeroed where ``|h| < T_in[l]``
                  (``input_thresholds``; TEAL)
``predicted``     ``C[a_1] | ... | C[a_m]`` -- the ``top_m`` centroids scored
                  highest by ``predictors[proj][l]`` from the MLP input; no
                  oracle, no threshold (like ``centroid_only``)
``neuron_predicted`` the ``density_to_count(d, width)`` neurons scored highest by
                  ``predictors[proj][l]`` from the MLP input (``neuron_density``)
================  =============================================================

``cats`` and ``teal`` mask ``down_in`` only.  Per layer, :meth:`Interventions.layer_stats` reports
the kept share of every masked projection (and, in ``teal``, of the MLP input), which
:mod:`apc.perplexity.accounting` turns into the multiply-adds each product really runs.
With ``batch_sizes``, the hooks also measure the *batch view* on the scored positions, in
token order within each window: for B consecutive tokens, the share of neurons that at least
one of them keeps (the weight rows a batch must read), and for cluster modes the sum of the
distinct assigned centroids' densities, capped at 1 (the rows read when each id group reads its own).

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
from apc.common.device import exact_matmul
from apc.clustering.distance import nearest
from apc.clustering.lowp import ExactProduct, fp8_supported
from apc.clustering.product import product_masks
from apc.perplexity import fused as _fused

MODES = ("dense", "sparse", "centroid", "centroid_only", "random", "random_only", "threshold", "predicted",
         "neuron_predicted", "cats", "teal")
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
    ``calls[proj]`` counts hook calls (``fused_calls`` those through the fused route); ``stats()`` and ``kept_fraction()``
    report what the masks kept over all intervened positions.
    """

    def __init__(self, mode: str, projections: Sequence[str], width: Mapping[str, int], n_layers: int = 0,
                 batch_sizes: Sequence[int] = ()):
        self.mode = mode
        self.projections = tuple(projections)
        self.width = dict(width)
        self.n_layers = int(n_layers)
        self.batch_sizes = tuple(int(b) for b in batch_sizes)
        self.calls = {p: 0 for p in self.projections}
        self.fused_calls = 0  # hook calls that took the one-pass Triton route
        self._kept = {p: 0 for p in self.projections}  # device tensors after the first call
        self._active = {p: 0 for p in self.projections}
        self._total = {p: 0 for p in self.projections}  # intervened positions * width
        self._layer_kept = {p: [0] * self.n_layers for p in self.projections}
        self._layer_total = {p: [0] * self.n_layers for p in self.projections}
        self._acc = {p: [None] * self.n_layers for p in self.projections}  # fused route: (kept, active) float64
        self._input_kept = [0] * self.n_layers  # teal: kept MLP-input elements per layer
        self._input_total = [0] * self.n_layers
        # batch view, per projection, layer and B: [union sum, grouped-read sum, groups, grouped groups]
        self._batch = {p: [{b: [0, 0, 0, 0] for b in self.batch_sizes} for _ in range(self.n_layers)]
                       for p in self.projections}
        self._id_counts = {p: [None] * self.n_layers for p in self.projections}  # top-1 cluster id histograms
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

    def _acc_for(self, proj: str, layer: int, device: torch.device) -> torch.Tensor:
        acc = self._acc[proj][layer]
        if acc is None:
            acc = self._acc[proj][layer] = torch.zeros(2, dtype=torch.float64, device=device)
        return acc

    def _counts(self, proj: str, layer: int | None = None) -> tuple:
        """(kept, active) of ``proj`` over all layers or one: the torch route's sums plus the fused route's."""
        if layer is None:
            kept, active = self._kept[proj], self._active[proj]
            accs = [a for a in self._acc[proj] if a is not None]
        else:
            kept, active = self._layer_kept[proj][layer], 0
            accs = [self._acc[proj][layer]] if self._acc[proj][layer] is not None else []
        for a in accs:
            kept, active = kept + a[0].item(), active + a[1].item()
        return kept, active

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
                kept, active = (float(v) / total for v in self._counts(p))
            out[p] = {"kept_fraction": kept, "active_fraction": active,
                      "calls": self.calls[p], "elements": total}
        return out

    def kept_fraction(self) -> dict[str, float]:
        """``{projection: kept share of neurons over all intervened positions}``."""
        return {p: s["kept_fraction"] for p, s in self.stats().items()}

    def layer_stats(self) -> dict:
        """Per layer: ``{"kept": {proj: [share per layer]}, "input_kept": [share per layer] | None}``.

        ``input_kept`` is the kept share of the MLP input (``teal`` only).  Dense: every share is 1.
        NaN where a hook never ran."""
        def share(num, den):
            return 1.0 if self.mode == "dense" else (float(num) / den if den else float("nan"))

        kept = {p: [share(self._counts(p, l)[0], t) for l, t in enumerate(self._layer_total[p])]
                for p in self.projections}
        inp = [share(k, t) for k, t in zip(self._input_kept, self._input_total)] if self.mode == "teal" else None
        return {"kept": kept, "input_kept": inp}

    def batch_view(self) -> dict:
        """Per projection and batch size B: ``union`` (mean share of a layer's neurons that at least one of
        B consecutive scored tokens keeps), ``grouped`` (cluster modes: the distinct assigned centroids'
        summed density, capped at 1; else None), each as ``{"mean": over layers, "layers": [...]}``;
        ``groups`` counts the B-token groups per layer.  ``{}`` without ``batch_sizes``."""
        out = {}
        for p in self.projections:
            out[p] = {}
            for b in self.batch_sizes:
                cells = [self._batch[p][l][b] for l in range(self.n_layers)]
                union = [float(c[0]) / c[2] if c[2] else float("nan") for c in cells]
                grouped = [float(c[1]) / c[3] if c[3] else None for c in cells]
                g = None if any(v is None for v in grouped) else grouped
                out[p][str(b)] = {"union": {"mean": float(np.nanmean(union)) if cells else float("nan"),
                                            "layers": union},
                                  "grouped": None if g is None else {"mean": float(np.mean(g)), "layers": g},
                                  "groups": int(cells[0][2] // max(1, self.width[p])) if cells else 0}
        return out

    def id_counts(self) -> dict[str, list[list[int]]]:
        """``{proj: [top-1 cluster-id counts (K,) per layer]}`` over the scored tokens (cluster modes)."""
        return {p: [c.tolist() for c in v] for p, v in self._id_counts.items() if v and all(c is not None for c in v)}


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
    gate_thresholds: Mapping[str, Sequence[float]] | None = None,
    input_thresholds: Sequence[float] | None = None,
    batch_sizes: Sequence[int] = (),
    fused: bool | None = None,
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
    gate_thresholds: ``{"down_in": [T per layer]}`` on ``|act(gate output)|`` (cats mode).
    input_thresholds: ``[T_in per layer]`` on the MLP input entering gate_proj and up_proj (teal mode).
    batch_sizes:     B values of the batch view (:meth:`Interventions.batch_view`); () = off.
    fused:           one-pass Triton masking (:mod:`apc.perplexity.fused`): None = wherever it runs (CUDA with
                     Triton), False = the torch route.  Both give the same outputs and statistics.
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
    if any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be >= 1, got {list(batch_sizes)}")
    handle = Interventions(mode, projections, width, n_layers, batch_sizes)
    if mode == "dense":
        return handle
    if mode in ("cats", "teal") and projections != ("down_in",):
        raise ValueError(f"mode {mode!r} masks the down_proj input: projections must be ['down_in'], got {list(projections)}")
    if mode in ("cats", "teal") and any(site.family.name != "gated" or not site.positional for site in layers):
        raise ValueError(f"mode {mode!r} needs a Llama-style gated FFN (gate_proj, up_proj, down_proj); this model's "
                         f"is {layers[0].family.name} ({layers[0].family.models})")

    thr = _check_thresholds(thresholds, projections, n_layers, mode)
    cents = _check_centroids(centroids, projections, width, n_layers, layers) if mode in _CENTROID_MODES else {}
    k_rand = _check_density(random_density, projections, width, "random_density") if mode in _RANDOM_MODES else {}
    keep_thr = _check_thresholds(keep_thresholds, projections, n_layers, mode, "keep_thresholds") \
        if mode in ("threshold", "teal") else {}
    gate_thr = _check_thresholds(gate_thresholds, projections, n_layers, mode, "gate_thresholds") \
        if mode == "cats" else {}
    in_thr = _check_thresholds({"input": input_thresholds} if input_thresholds is not None else None, ["input"],
                               n_layers, mode, "input_thresholds")["input"] if mode == "teal" else None
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
    acts = _activations(model, n_layers) if mode == "cats" else None

    try:
        if mode in _PREDICTOR_MODES:
            for l, site in enumerate(layers):
                handle._handles.append(site.on_ffn_input(lambda x, l=l: mlp_in.__setitem__(l, x)))
        if mode == "cats":  # the gate's activation of the token decides; kept per layer for down_in
            for l, mods in enumerate(layers):
                handle._handles.append(mods["gate"].register_forward_hook(
                    lambda m, args, out, l=l: mlp_in.__setitem__(l, acts[l](out))))
        if mode == "teal":  # the MLP input, thresholded before gate_proj and up_proj
            for l, mods in enumerate(layers):
                for name in ("gate", "up"):
                    fn = _make_input_mask(handle, l, in_thr[l], skip_first_position, count=name == "gate")
                    handle._handles.append(mods[name].register_forward_pre_hook(
                        lambda m, args, fn=fn: (fn(args[0]),) + tuple(args[1:])))
        for proj in projections:
            for l, site in enumerate(layers):
                dev = site.device(proj)
                if mode in _RANDOM_MODES and dev not in generators:
                    generators[dev] = torch.Generator(device=dev).manual_seed(int(seed))
                choose = _chooser(mode, l, mlp_in, cents=cents.get(proj, [None] * n_layers)[l],
                                  k=k_rand.get(proj), gen=generators.get(dev),
                                  keep_threshold=keep_thr.get(proj, [None] * n_layers)[l],
                                  predictor=preds.get(proj, [None] * n_layers)[l], top_m=top_m,
                                  k_neuron=k_neuron.get(proj), n_groups=n_groups[proj], scale=scales[proj][l],
                                  gate_threshold=gate_thr.get(proj, [None] * n_layers)[l],
                                  fused=fused is not False and _fused.enabled(dev))
                fn = _make_apply(handle, proj, l, thr[proj][l], choose, skip_first_position and site.positional)
                handle._handles.append(site.replace(proj, fn, skip_first_position))
    except BaseException:
        handle.remove()
        raise
    return handle


def _chooser(mode, layer, mlp_in, *, cents, k, gen, keep_threshold, predictor, top_m, k_neuron, n_groups=1,
             scale=False, gate_threshold=None, fused=False):
    """``(flat x (N, W), pattern p (N, W) bool, |x| (N, W) float32) -> keep (N, W) bool`` for one
    (layer, projection).

    Cluster modes also set ``choose.ids`` (``(N, m)`` int64 assigned centroid ids, or None) and
    ``choose.density`` (``(K,)`` float32 centroid densities) for the batch view.  With ``fused``,
    ``choose.spec(flat, threshold)`` gives the arguments of :func:`apc.perplexity.fused.mask_rows`
    instead (the same mask, without the float32 ``|x|`` and the pattern as tensors)."""
    density = cents.density() if cents is not None else None

    def scores(n_rows: int) -> torch.Tensor:
        h = mlp_in[layer]
        h = h.reshape(-1, h.shape[-1])
        if h.shape[0] != n_rows:
            raise RuntimeError(f"layer {layer}: MLP input has {h.shape[0]} positions, the hooked tensor {n_rows}")
        return predictor(h.float())

    def gate_keep(n_rows: int) -> torch.Tensor:
        g = mlp_in[layer]
        g = g.reshape(-1, g.shape[-1])
        if g.shape[0] != n_rows:
            raise RuntimeError(f"layer {layer}: gate output has {g.shape[0]} positions, down_in {n_rows}")
        return g.abs().float() >= gate_threshold

    def random_keep(flat: torch.Tensor) -> torch.Tensor:
        noise = torch.rand(flat.shape, generator=gen, device=flat.device)
        if fused and 0 < k < flat.shape[1]:
            r = _fused.top_n_float(noise, k)  # ties at the k-th value from the lowest position
            if r is not None:
                return r
        return torch.zeros(flat.shape, dtype=torch.bool, device=flat.device).scatter_(
            1, noise.topk(k, dim=1).indices, True)

    def weighted_keep(p: torch.Tensor | None, absx: torch.Tensor | None) -> torch.Tensor:
        """Centroid masks of product cells (by pattern) and of the weighted oracle (by |x|)."""
        if scale is False:  # product cells: nearest centroid per group
            return product_masks(p.float(), cents.float(), n_groups)
        w = absx if scale is None else absx * scale  # oracle by least missed weight |x| (or |x| * column scale)
        return product_masks(w, cents.float(), n_groups)

    def choose(flat: torch.Tensor, p: torch.Tensor, absx: torch.Tensor) -> torch.Tensor:
        choose.ids = None
        if mode == "sparse":
            return p
        if mode == "cats":
            return gate_keep(flat.shape[0])
        if mode in ("centroid", "centroid_only"):
            if scale is False and n_groups == 1:  # oracle by the pattern: nearest centroid
                ids = nearest_centroid(p.float(), cents.float())
                choose.ids = ids[:, None]
                m = cents.rows.index_select(0, ids)
            else:
                m = weighted_keep(p, absx)
            return m if mode == "centroid_only" else p & m
        if mode in _RANDOM_MODES:
            r = random_keep(flat)
            return r & p if mode == "random" else r
        if mode in ("threshold", "teal"):
            return absx >= keep_threshold
        s = scores(flat.shape[0])
        if mode == "predicted":
            ids = s.argmax(dim=1, keepdim=True) if top_m == 1 else s.topk(top_m, dim=1).indices
            choose.ids = ids
            return cents.rows[ids].any(dim=1)
        return top_n_mask(s, k_neuron)  # neuron_predicted

    def spec(flat: torch.Tensor, threshold: float) -> dict:
        choose.ids = None
        if mode == "sparse":
            return {"kind": "pattern"}
        if mode in ("threshold", "teal"):
            return {"kind": "threshold", "keep_threshold": keep_threshold}
        if mode == "cats":
            return {"kind": "keep", "keep": gate_keep(flat.shape[0])}
        if mode in _RANDOM_MODES:
            return {"kind": "keep", "keep": random_keep(flat), "and_pattern": mode == "random"}
        if mode in ("centroid", "centroid_only"):
            if scale is False and n_groups == 1:
                ids = cents.nearest(flat, threshold)
                choose.ids = ids[:, None]
                return {"kind": "centroids", "centroids": cents.rows, "ids": choose.ids,
                        "and_pattern": mode == "centroid"}
            absx = flat.abs().float()
            m = weighted_keep(absx >= threshold, absx)
            return {"kind": "keep", "keep": m, "and_pattern": mode == "centroid"}
        s = scores(flat.shape[0])
        if mode == "predicted":
            choose.ids = s.argmax(dim=1, keepdim=True) if top_m == 1 else s.topk(top_m, dim=1).indices
            return {"kind": "centroids", "centroids": cents.rows, "ids": choose.ids}
        keep = _fused.top_n_float(s, k_neuron)  # None for scores it does not take
        return {"kind": "keep", "keep": keep if keep is not None else top_n_mask(s, k_neuron)}

    choose.ids, choose.density = None, density
    choose.spec = spec if fused else None
    return choose


def _make_apply(handle, proj, layer, threshold, choose, skip_first):
    """Build ``x -> masked x`` for one (layer, projection)."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        handle.calls[proj] += 1
        w = x.shape[-1]
        flat = x.reshape(-1, w)
        if choose.spec is not None and flat.stride(1) == 1:
            return fused_apply(x, flat)
        absx = flat.abs().float()  # |x| once, for the pattern and the modes that threshold it again
        p = absx >= threshold
        keep = choose(flat, p, absx).view(x.shape)
        p = p.view(x.shape)
        if skip_first and x.dim() >= 2:
            keep_s, p_s = keep[..., 1:, :], p[..., 1:, :]
            keep = keep.clone()
            keep[..., 0, :] = True
        else:
            keep_s, p_s = keep, p
        n_kept = keep_s.sum()
        handle._kept[proj] = handle._kept[proj] + n_kept
        handle._active[proj] = handle._active[proj] + p_s.sum()
        handle._layer_kept[proj][layer] = handle._layer_kept[proj][layer] + n_kept
        record(x, keep_s.numel(), keep_s)
        return x.masked_fill(~keep, 0)

    def fused_apply(x: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        handle.fused_calls += 1
        seq = x.shape[-2] if skip_first and x.dim() >= 2 else 0
        args = choose.spec(flat, threshold)
        acc = handle._acc_for(proj, layer, flat.device)
        out = _fused.mask_rows(flat, threshold, acc, seq=seq, keep_out=bool(handle.batch_sizes), **args)
        keep_s = None
        if handle.batch_sizes:
            out, keep = out
            keep_s = keep.view(x.shape)[..., 1:, :] if seq else keep.view(x.shape)
        n_rows, w = flat.shape
        record(x, (n_rows - (n_rows // seq if seq else 0)) * w, keep_s)
        return out.view(x.shape)

    def record(x: torch.Tensor, n_counted: int, keep_s: torch.Tensor | None) -> None:
        """Element totals, top-1 id counts and the batch view of one call (position 0 left out)."""
        handle._total[proj] += n_counted
        handle._layer_total[proj][layer] += n_counted
        ids = getattr(choose, "ids", None)
        if ids is not None:
            ids = ids.view(*x.shape[:-1], ids.shape[-1])
            if skip_first and x.dim() >= 2:
                ids = ids[..., 1:, :]
            top1 = ids[..., 0].reshape(-1)  # an index_add, not a bincount: no wait for the device
            counts = torch.zeros(choose.density.shape[0], dtype=torch.int64, device=top1.device).index_add_(
                0, top1, torch.ones_like(top1))
            prev = handle._id_counts[proj][layer]
            handle._id_counts[proj][layer] = counts if prev is None else prev + counts
        if handle.batch_sizes:
            _batch_view(handle._batch[proj][layer], keep_s, ids, getattr(choose, "density", None))

    return apply


def _batch_view(acc: dict, keep: torch.Tensor, ids: torch.Tensor | None, density: torch.Tensor | None) -> None:
    """Add the batch view of ``keep: (..., seq, W) bool`` to ``acc[B] = [union kept, grouped read,
    groups * W, groups]``: consecutive B positions of each sequence form a group (a trailing partial
    group is left out).  ``ids: (..., seq, m)`` assigned centroid ids with ``density: (K,)``."""
    w = keep.shape[-1]
    keep = keep.reshape(-1, keep.shape[-2], w)
    if ids is not None:
        ids = ids.reshape(-1, ids.shape[-2], ids.shape[-1])
    seq = keep.shape[1]
    for b, cell in acc.items():
        n = seq // b
        if n == 0:
            continue
        groups = keep[:, : n * b].reshape(keep.shape[0], n, b, w).any(dim=2)
        cell[0] = cell[0] + groups.sum()
        cell[2] += groups.shape[0] * n * w
        if ids is not None and density is not None:
            g = ids[:, : n * b].reshape(ids.shape[0] * n, -1).sort(dim=1).values
            first = torch.ones_like(g, dtype=torch.bool)
            first[:, 1:] = g[:, 1:] != g[:, :-1]
            read = (density[g] * first).sum(dim=1).clamp(max=1.0)
            cell[1] = cell[1] + read.sum()
            cell[3] += g.shape[0]


def _make_input_mask(handle, layer, threshold, skip_first, count):
    """Build ``h -> h masked where |h| < threshold`` for the MLP input of one layer (teal mode)."""

    def mask(h: torch.Tensor) -> torch.Tensor:
        keep = h.abs().float() >= threshold
        if skip_first and h.dim() >= 2:
            keep[..., 0, :] = True
            kept = keep[..., 1:, :]
        else:
            kept = keep
        if count:
            handle._input_kept[layer] = handle._input_kept[layer] + kept.sum()
            handle._input_total[layer] += kept.numel()
        return h.masked_fill(~keep, 0)

    return mask


def _activations(model: nn.Module, n_layers: int) -> list[Callable]:
    """The activation function applied to each layer's gate output (``mlp.act_fn``)."""
    from apc.common.sites import decoder_layers

    out = []
    for i, layer in enumerate(decoder_layers(model)):
        act = getattr(getattr(layer, "mlp", None), "act_fn", None)
        if act is None:
            raise ValueError(f"mode 'cats' needs a gated MLP with an activation (mlp.act_fn); layer {i} has none")
        out.append(act)
    return out[:n_layers]


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


class _CentroidSet:
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


def _check_centroids(centroids, projections, width, n_layers, layers) -> dict[str, list[_CentroidSet]]:
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
                cache[(src, dev)] = _CentroidSet(c[src].to(device=dev).contiguous())
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
