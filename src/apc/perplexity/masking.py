"""Forward hooks that apply FFN interventions to a decoder of any FFN family: the generic machinery (the
statistics, the batch view by scope, hook installation, the fused route).

For every FFN site ``l`` (a decoder layer, or a (layer, expert) of a mixture of experts:
:mod:`apc.common.sites`) and configured projection (for a Llama-style FFN: ``gate``, ``up``, ``down`` = module
outputs; ``down_in`` = input of ``down_proj`` via a forward pre-hook), the hooked tensor ``x: (batch, seq,
width)`` (an expert site: ``(n_routed, width)``) is replaced by ``x.masked_fill(~keep, 0)``.  ``keep: (batch,
seq, width) bool`` comes from a *mask rule* per (layer, projection):

* a built-in mode (:data:`MODES`, :mod:`apc.perplexity.mode_rules`): ``dense`` (no hooks), ``sparse`` (the
  pattern ``p = |x| >= T[proj][l]``), the cluster modes (``centroid``, ``centroid_only``, ``predicted``),
  ``random`` / ``random_only`` and ``neuron_predicted``;
* or a line's (:mod:`apc.lines`): its ``rule`` for the torch and the fused route, what it taps before deciding
  (the gate's activation, the MLP input), its input mask (lines decided by the input) and extra hooks; a line of
  ``sequence`` scope keeps one mask per sequence, decided from its dense prompt.

Per layer, :meth:`Interventions.layer_stats` reports the kept share of every masked projection (and, for lines
decided by the input, of the MLP input), which :mod:`apc.perplexity.accounting` turns into the multiply-adds
each product really runs.  With ``batch_sizes``, the hooks also measure the *batch view* on the scored
positions, in token order within each window: for B consecutive tokens, the share of neurons that at least one
of them keeps (the weight rows a batch must read), and for cluster modes the sum of the distinct assigned
centroids' densities, capped at 1 (the rows read when each id group reads its own).  The pattern ``p``
(``thresholds``) is computed in every mode for the ``active_fraction`` statistic.

With ``skip_first_position=True`` (a BOS token at column 0), position 0 of every forward call's input is left
untouched in every mode and excluded from the statistics (an expert site leaves the rows of position-0 tokens
untouched).  This assumes full-sequence forwards (no KV-cache decoding).
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from apc.clustering.common import top_n_mask
from apc.common.projections import PROJECTIONS
from apc.common.sites import ffn_sites
from apc.lines.base import Line
from apc.lines.registry import all_lines, line_of_mode
from apc.perplexity import fused as _fused
from apc.perplexity.attention_masks import install_attention_masks
from apc.perplexity.input_mask import counted_mask
from apc.perplexity.batch_view import add_batch_view, sequence_view
from apc.perplexity.maskargs import Masks, check_thresholds, site_width
from apc.perplexity.mode_rules import MODES, builtin_rules, nearest_centroid  # noqa: F401  (nearest_centroid: re-exported)


class Interventions:
    """Handle returned by :func:`install_interventions`.

    ``remove()`` detaches every hook (also done on leaving a ``with`` block).
    ``calls[proj]`` counts hook calls (``fused_calls`` those through the fused route); ``stats()`` and ``kept_fraction()``
    report what the masks kept over all intervened positions.
    """

    def __init__(self, mode: str, projections: Sequence[str], width: Mapping[str, int], n_layers: int = 0,
                 batch_sizes: Sequence[int] = (), *, input_masked: bool = False, scope: str = "token"):
        self.mode = mode
        self.input_masked = bool(input_masked)  # the MLP input is masked too: its kept share is reported
        self.scope = scope
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
        self._input_kept = [0] * self.n_layers  # input modes: kept MLP-input elements per layer
        self._input_total = [0] * self.n_layers
        self.attention = None  # lines of model compute scope: the attention inputs' counts (attention_masks)
        # batch view, per projection, layer and B: [union sum, grouped-read sum, groups, grouped groups]
        self._batch = {p: [{b: [0, 0, 0, 0] for b in self.batch_sizes} for _ in range(self.n_layers)]
                       for p in self.projections}
        self._id_counts = {p: [None] * self.n_layers for p in self.projections}  # top-1 cluster id histograms
        self._seq_masks = {p: [[] for _ in range(self.n_layers)] for p in self.projections}  # (W,) per sequence
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

        ``input_kept`` is the kept share of the MLP input (lines decided by the input only).  Dense: every share is 1.
        NaN where a hook never ran."""
        def share(num, den):
            return 1.0 if self.mode == "dense" else (float(num) / den if den else float("nan"))

        kept = {p: [share(self._counts(p, l)[0], t) for l, t in enumerate(self._layer_total[p])]
                for p in self.projections}
        inp = [share(k, t) for k, t in zip(self._input_kept, self._input_total)] if self.input_masked else None
        return {"kept": kept, "input_kept": inp, **({"attn_kept": self.attention.shares()} if self.attention else {})}

    def batch_view(self) -> dict:
        """Per projection and batch size B: ``union`` (mean share of a layer's neurons that at least one of
        B consecutive scored tokens keeps), ``grouped`` (cluster modes: the distinct assigned centroids'
        summed density, capped at 1; else None), each as ``{"mean": over layers, "layers": [...]}``;
        ``groups`` counts the B-token groups per layer.  ``{}`` without ``batch_sizes``.  A line of
        ``sequence`` scope keeps one mask per sequence: its ``union`` is over B consecutive sequences."""
        out = {}
        for p in self.projections:
            out[p] = {}
            if self.scope == "sequence":
                out[p] = sequence_view(self._seq_masks[p], self.batch_sizes, self.width[p])
                continue
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


def install_interventions(model: nn.Module, masks: Masks | str, *, skip_first_position: bool,
                          batch_sizes: Sequence[int] = (), fused: bool | None = None, **legacy) -> Interventions:
    """Install the hooks of ``masks.mode`` on every layer's ``masks.projections``; return the handle.

    ``masks``: a :class:`apc.perplexity.maskargs.Masks` (what the mode applies; its fields say which
    mode reads which); a mode name with the same fields as keywords (``legacy``) builds one.
    batch_sizes:     B values of the batch view (:meth:`Interventions.batch_view`); () = off.
    fused:           one-pass Triton masking (:mod:`apc.perplexity.fused`): None = wherever it runs (CUDA with
                     Triton), False = the torch route.  Both give the same outputs and statistics.
    """
    if isinstance(masks, str):
        masks = Masks(masks, **legacy)
    elif legacy:
        raise TypeError(f"install_interventions takes a Masks or a mode with keywords, not both ({sorted(legacy)})")
    mode, projections = masks.mode, masks.projections
    line = masks.line.impl if masks.line is not None and type(masks.line.impl).rule is not Line.rule else \
        line_of_mode(mode)
    if mode not in MODES and line is None:
        known = list(MODES) + sorted({impl.mode for impl in all_lines().values()} - set(MODES))
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(known)}")
    bad = [p for p in projections if p not in PROJECTIONS]
    if bad:
        raise ValueError(f"unknown projection(s) {bad}; expected among {', '.join(PROJECTIONS)}")
    if len(set(projections)) != len(projections):
        raise ValueError(f"duplicate projections in {list(projections)}")

    layers = ffn_sites(model)
    n_layers = len(layers)
    width = {p: site_width(layers[0], p) for p in projections}
    if any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch_sizes must be >= 1, got {list(batch_sizes)}")
    handle = Interventions(mode, projections, width, n_layers, batch_sizes,
                           input_masked=line is not None and line.decided_by == "input",
                           scope=line.scope if line is not None else "token")
    if mode == "dense":
        return handle
    if line is not None and line.gated:
        if projections != ("down_in",):
            raise ValueError(f"mode {mode!r} masks the down_proj input: projections must be ['down_in'], got "
                             f"{list(projections)}")
        if any(site.family.name != "gated" or not site.positional for site in layers):
            raise ValueError(f"mode {mode!r} needs a Llama-style gated FFN (gate_proj, up_proj, down_proj); this "
                             f"model's is {layers[0].family.name} ({layers[0].family.models})")
    thr = check_thresholds(masks.thresholds, projections, n_layers, mode)
    taps: dict[int, torch.Tensor] = {}
    handle._mlp_inputs = taps
    use_fused = lambda dev: fused is not False and _fused.enabled(dev) and (line is None or line.scope != "sequence")
    try:
        if line is not None:
            rules = _line_rules(model, line, masks, layers, width, handle, taps, skip_first_position, use_fused)
        else:
            rules = builtin_rules(masks, layers, width, n_layers, handle, taps, use_fused)
        for proj in projections:
            for l, site in enumerate(layers):
                fn = _make_apply(handle, proj, l, thr[proj][l], rules[proj][l], skip_first_position and site.positional,
                                 sequence=rules.get("sequence"))
                handle._handles.append(site.replace(proj, fn, skip_first_position))
    except BaseException:
        handle.remove()
        raise
    return handle


def _line_rules(model, line, masks, layers, width, handle, taps, skip_first, use_fused) -> dict:
    """The mask rules of a line (:mod:`apc.lines`) per projection and layer; installs its taps, input masks
    and extra hooks on the way."""
    state = line.prepare(masks, layers, width, model)
    if line.tap == "ffn_input":
        for l, site in enumerate(layers):
            handle._handles.append(site.on_ffn_input(lambda x, l=l: taps.__setitem__(l, x)))
    elif line.tap == "gate":  # the gate's activation of the token, kept per layer for the later hooks
        acts = _activations(model, len(layers), masks.mode)
        for l, mods in enumerate(layers):
            handle._handles.append(mods["gate"].register_forward_hook(
                lambda m, args, out, l=l: taps.__setitem__(l, acts[l](out))))
    for l, mods in enumerate(layers):  # the MLP input, masked once before gate_proj and up_proj
        keep_in = line.input_mask(state, l)
        if keep_in is None:
            continue
        fn = _make_input_mask(handle, l, keep_in, skip_first)
        for name in ("gate", "up"):
            handle._handles.append(mods[name].register_forward_pre_hook(
                lambda m, args, fn=fn, count=name == "gate": (fn(args[0], count),) + tuple(args[1:])))
    attn = [line.attention_masks(state, l) for l in range(len(layers))]
    if any(a is not None for a in attn):  # the attention inputs too (a line of model compute scope)
        handle.attention, hooks = install_attention_masks(model, attn, skip_first)
        handle._handles += hooks
    handle._handles += list(line.extra_hooks(state, layers, handle))
    rules = {p: [line.rule(state, l, p, taps, fused=use_fused(site.device(p))) for l, site in enumerate(layers)]
             for p in masks.projections}
    for p in masks.projections:
        for r, site in zip(rules[p], layers):
            r.use_fused = use_fused(site.device(p))
    if line.scope == "sequence":
        if hasattr(line, "check_prompt"):
            line.check_prompt(state, skip_first)
        rules["sequence"] = (line.dense_positions(state),
                             lambda x, start, layer: line.sequence_keep(state, x, start, layer=layer))
    return rules


def _fused_args(spec: dict) -> dict:
    """:func:`apc.perplexity.fused.mask_rows`'s arguments of a rule's spec (``top_n`` resolved to a keep mask)."""
    if spec.get("kind") != "top_n":
        return spec
    keep = _fused.top_n_float(spec["score"], spec["k"])  # None for scores it does not take
    return {"kind": "keep", "keep": keep if keep is not None else top_n_mask(spec["score"], spec["k"])}


def _make_apply(handle, proj, layer, threshold, choose, skip_first, sequence=None):
    """Build ``x -> masked x`` for one (layer, projection); ``sequence``: ``(prompt, keep_fn)`` of a line of
    ``sequence`` scope (its prompt runs dense and is left out of the statistics)."""

    def apply(x: torch.Tensor) -> torch.Tensor:
        handle.calls[proj] += 1
        w = x.shape[-1]
        flat = x.reshape(-1, w)
        if getattr(choose, "use_fused", False) and flat.stride(1) == 1:
            return fused_apply(x, flat)
        absx = flat.abs().float()  # |x| once, for the pattern and the modes that threshold it again
        p = absx >= threshold
        if sequence is not None:  # one-position calls (KV-cache decoding) follow the prompt: none is skipped
            keep = sequence[1](x, int(skip_first), layer)
            n_skip = sequence[0] if x.shape[-2] > 1 else 0
        else:
            keep = choose.keep(flat, p, absx).view(x.shape)
            n_skip = 1 if skip_first and x.dim() >= 2 else 0
        p = p.view(x.shape)
        if n_skip:
            keep_s, p_s = keep[..., n_skip:, :], p[..., n_skip:, :]
            keep = keep.clone()
            keep[..., :n_skip, :] = True
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
        args = _fused_args(choose.spec(flat, threshold))
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
        if handle.batch_sizes and sequence is not None:  # one mask per sequence
            handle._seq_masks[proj][layer].append(keep_s[..., 0, :].reshape(-1, keep_s.shape[-1]).cpu())
        elif handle.batch_sizes:
            add_batch_view(handle._batch[proj][layer], keep_s, ids, getattr(choose, "density", None))

    return apply


def _make_input_mask(handle, layer, keep_in, skip_first):
    """Build ``(h, count) -> h masked`` for the MLP input of one layer (:func:`apc.perplexity.input_mask.counted_mask`:
    gate_proj and up_proj read the same tensor; ``count`` adds its kept share to the layer's statistics)."""
    def record(kept: torch.Tensor) -> None:
        handle._input_kept[layer] = handle._input_kept[layer] + kept.sum()
        handle._input_total[layer] += kept.numel()

    return counted_mask(keep_in, skip_first, record)


def _activations(model: nn.Module, n_layers: int, mode: str) -> list[Callable]:
    """The activation function applied to each layer's gate output (``mlp.act_fn``)."""
    from apc.common.sites import decoder_layers

    out = []
    for i, layer in enumerate(decoder_layers(model)):
        act = getattr(getattr(layer, "mlp", None), "act_fn", None)
        if act is None:
            raise ValueError(f"mode {mode!r} needs a gated MLP with an activation (mlp.act_fn); layer {i} has none")
        out.append(act)
    return out[:n_layers]


