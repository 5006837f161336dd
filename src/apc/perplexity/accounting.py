"""The FFN multiply-adds a masking method really runs, per matrix product and layer.

For a gated FFN ``y = W_down · (act(W_gate·h) ⊙ (W_up·h))`` the three products are
``gate``, ``up`` and ``down``.  What a mask on the intermediate ``down_in`` (one neuron = one
row of ``W_gate`` and ``W_up`` and one column of ``W_down``) lets a method skip depends on
what the method needs to know before deciding:

==============  ===========================  =========================================
how the mask    gate / up / down share        methods
is decided
==============  ===========================  =========================================
before the FFN  ρ / ρ / ρ                     cluster ids (oracle, predicted), neuron
                                              predictor, static and random masks
from the gate   1 / ρ / ρ                     CATS: ``|act(W_gate·h)|`` thresholded
from ``down_in``  1 / 1 / ρ                   a threshold on the intermediate itself
from the input  σ_in / σ_in / ρ               TEAL, WINA, LaRoSA: the MLP input masked too
==============  ===========================  =========================================

GRIFFIN decides before the FFN on every token after its prompt (the prompt runs dense and is
not scored).  What a line spends beyond the masked products (LaRoSA's rotation ``Q^T h``: ``d_model²``
multiply-adds per token and layer) is its overhead share (:meth:`apc.lines.Line.overhead_share`).

ρ is the measured kept share of ``down_in`` in that layer, σ_in the measured kept share of
the MLP input.  A mask on a product's *output* (``gate``, ``up``, ``down``) chosen before
the FFN skips rows of that product only.  The FFN share is the FLOP-weighted mean over
products and layers (each product weighs ``d_in · d_out``; the three of a gated MLP weigh
the same, so the share is their mean).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

PRODUCTS = ("gate", "up", "down")


def product_shares(decided: str, kept: Mapping[str, Sequence[float]], n_layers: int,
                   input_kept: Sequence[float] | None = None) -> dict[str, list[float]]:
    """``{product: [share of its multiply-adds run, per layer]}`` of one method.

    ``decided``: what the method's mask needs before it is decided (``before``, ``gate``, ``down_in`` or ``input``:
    :attr:`apc.lines.Line.decided_by`); ``kept: {projection: [kept share per layer]}`` of the masked projections
    (measured); ``input_kept``: the MLP input's kept share per layer (methods decided by the input).
    """
    if decided not in ("before", "gate", "down_in", "input"):
        raise ValueError(f"decided must be before, gate, down_in or input, got {decided!r}")
    shares = {prod: [1.0] * n_layers for prod in PRODUCTS}
    if decided != "before" and set(kept) != {"down_in"}:
        raise ValueError(f"a mask decided by {decided!r} masks down_in only, got projections {sorted(kept)}")
    if decided == "input" and (input_kept is None or len(input_kept) != n_layers):
        raise ValueError(f"a mask decided by the input needs the MLP input's kept share per layer ({n_layers} values)")
    for proj, per_layer in kept.items():
        if len(per_layer) != n_layers:
            raise ValueError(f"kept[{proj!r}] has {len(per_layer)} values, expected one per layer ({n_layers})")
        for l, rho in enumerate(map(float, per_layer)):
            if proj != "down_in":  # an output mask chosen before the FFN: that product's rows
                shares[proj][l] = min(shares[proj][l], rho)
                continue
            shares["down"][l] = min(shares["down"][l], rho)
            if decided in ("before", "gate"):
                shares["up"][l] = min(shares["up"][l], rho)
            if decided == "before":
                shares["gate"][l] = min(shares["gate"][l], rho)
            if decided == "input":
                for prod in ("gate", "up"):
                    shares[prod][l] = min(shares[prod][l], float(input_kept[l]))
    return shares


def ffn_share(shares: Mapping[str, Sequence[float]], weights: Mapping[str, float] | None = None) -> float:
    """FLOP-weighted mean of :func:`product_shares` over products and layers (``weights``:
    multiply-adds per token of each product; equal by default, as in a gated MLP)."""
    w = {prod: float((weights or {}).get(prod, 1.0)) for prod in shares}
    total = sum(w[prod] * len(v) for prod, v in shares.items())
    return float(sum(w[prod] * np.sum(v) for prod, v in shares.items()) / total)


def product_weights(model) -> dict[str, float]:
    """Multiply-adds per token of each product of layer 0 (``d_in · d_out`` of its weight)."""
    from apc.common.projections import mlp_projections

    mods = mlp_projections(model)[0]
    return {prod: float(mods[prod].weight.numel()) for prod in PRODUCTS}


def model_share(ffn_compute: float, attn_kept: Mapping[str, Sequence[float]], ffn_weights: Mapping[str, float],
                attn_weights: Mapping[str, float]) -> float:
    """The compute share over every linear layer of the blocks (a line of ``model`` compute scope): the FFN's
    ``ffn_compute`` (its products and overheads, a share of the FFN's multiply-adds) and each attention input's
    measured kept share per layer (``attn_kept: {"qkv": [...], "o": [...]}``, 1 where an input is not masked),
    weighed by multiply-adds per token and layer (``ffn_weights``: :func:`product_weights`; ``attn_weights``:
    :func:`apc.perplexity.attention_masks.attention_weights`)."""
    f = float(sum(ffn_weights.values()))
    a = {k: float(v) for k, v in attn_weights.items()}
    attn = sum(a[k] * float(np.mean(attn_kept[k])) if k in attn_kept else a[k] for k in a)
    return float((f * ffn_compute + attn) / (f + sum(a.values())))
