"""Input masks of the attention projections, for lines whose compute share covers every linear layer
(:meth:`apc.lines.Line.compute_scope` ``"model"``: TEAL as published).

Per decoder layer two inputs can be masked (:meth:`apc.lines.Line.attention_masks`):

* ``qkv``: the attention input (the normed hidden state) that q_proj, k_proj and v_proj share: one test over
  it, as one threshold over the stacked ``[W_q; W_k; W_v]``;
* ``o``: the attention output entering o_proj.

Each is ``h -> (h masked, keep)`` like the MLP input mask, and follows the same position rule (with
``skip_first``, position 0 of every call stays dense).  :class:`AttentionCounts` keeps the kept share per layer
and input; :func:`attention_weights` gives each product's multiply-adds per token.  Only torch is needed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from apc.common.sites import decoder_layers
from apc.perplexity.input_mask import counted_mask

__all__ = ["INPUTS", "attention_sites", "attention_weights", "AttentionCounts", "install_attention_masks",
           "attention_inputs"]

#: the masked attention inputs and the projections that read each
INPUTS = {"qkv": ("q_proj", "k_proj", "v_proj"), "o": ("o_proj",)}


def attention_sites(model: nn.Module) -> list[dict[str, nn.Module]]:
    """Per decoder layer ``{q_proj, k_proj, v_proj, o_proj: nn.Linear}`` (Llama-style attention); ``ValueError``
    naming what is missing for another architecture."""
    out = []
    for l, layer in enumerate(decoder_layers(model)):
        attn = getattr(layer, "self_attn", None)
        mods = {n: getattr(attn, n, None) for names in INPUTS.values() for n in names}
        missing = [n for n, m in mods.items() if not isinstance(m, nn.Linear)]
        if attn is None or missing:
            raise ValueError(f"masking the attention inputs needs Llama-style attention projections "
                             f"(self_attn.q_proj, k_proj, v_proj, o_proj); layer {l} of {type(model).__name__} "
                             f"lacks {', '.join(missing) if attn is not None else 'self_attn'}")
        out.append(mods)
    return out


def attention_weights(model: nn.Module) -> dict[str, float]:
    """Multiply-adds per token and layer of each attention input's products: ``{"qkv": d_model * (d_q + 2 d_kv),
    "o": d_q * d_model}`` (the first layer's shapes)."""
    mods = attention_sites(model)[0]
    return {k: float(sum(mods[n].in_features * mods[n].out_features for n in names)) for k, names in INPUTS.items()}


class AttentionCounts:
    """Kept and total elements of each masked attention input per layer."""

    def __init__(self, n_layers: int):
        self.kept = {k: [0] * n_layers for k in INPUTS}
        self.total = {k: [0] * n_layers for k in INPUTS}

    def shares(self) -> dict[str, list[float]]:
        """``{"qkv": [kept share per layer], "o": [...]}`` (NaN where the hook never ran)."""
        return {k: [float(n) / t if t else float("nan") for n, t in zip(self.kept[k], self.total[k])] for k in INPUTS}


def _mask(counts: AttentionCounts, kind: str, layer: int, keep_in: Callable, skip_first: bool) -> Callable:
    """``(h, count) -> h masked`` (:func:`apc.perplexity.input_mask.counted_mask`): q/k/v read the same tensor."""
    def record(keep: torch.Tensor) -> None:
        counts.kept[kind][layer] = counts.kept[kind][layer] + keep.sum()
        counts.total[kind][layer] += keep.numel()

    return counted_mask(keep_in, skip_first, record)


def install_attention_masks(model: nn.Module, masks: Sequence, skip_first: bool) -> tuple[AttentionCounts, list]:
    """Pre-hooks masking the attention inputs: ``masks[l]`` is None or ``(qkv keep_in, o keep_in)`` (either may be
    None) for layer ``l``.  Returns the counts and the hook handles."""
    sites = attention_sites(model)
    if len(masks) != len(sites):
        raise ValueError(f"attention masks for {len(masks)} layers, the model has {len(sites)}")
    counts, handles = AttentionCounts(len(sites)), []
    for l, (pair, mods) in enumerate(zip(masks, sites)):
        for kind, keep_in in zip(INPUTS, pair or (None, None)):
            if keep_in is None:
                continue
            fn = _mask(counts, kind, l, keep_in, skip_first)
            for i, name in enumerate(INPUTS[kind]):
                handles.append(mods[name].register_forward_pre_hook(
                    lambda m, args, fn=fn, count=i == 0: (fn(args[0], count),) + tuple(args[1:])))
    return counts, handles


@torch.no_grad()
def attention_inputs(model: nn.Module, windows: torch.Tensor, *, skip_first: bool = True) -> list[tuple]:
    """Per layer ``(qkv input (n, d_model), o input (n, d_q))`` float32 of a dense pass over ``windows: (n_windows,
    seq_len)`` token ids, ``n`` = every position (column 0 left out with ``skip_first``), on the model's device."""
    sites = attention_sites(model)
    got: dict = {}
    hooks = [mods[name].register_forward_pre_hook(
        lambda m, args, key=(l, kind): got.setdefault(key, []).append(
            (args[0][:, 1:] if skip_first else args[0]).reshape(-1, args[0].shape[-1]).float()))
        for l, mods in enumerate(sites) for kind, name in (("qkv", "q_proj"), ("o", "o_proj"))]
    try:
        device = next(model.parameters()).device
        for w in windows:
            model(w[None].to(device))
    finally:
        for h in hooks:
            h.remove()
    return [(torch.cat(got[l, "qkv"]), torch.cat(got[l, "o"])) for l in range(len(sites))]
