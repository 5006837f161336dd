"""The projection names and where they live in a model's FFN.

The names (``gate``, ``up``, ``down``, ``down_in``, ``fc1``) come from the layout
table (:mod:`apc.common.families`), which says for every FFN family which module,
side and half of the layer's FFN carries each one; :mod:`apc.common.sites` turns
a model into its sites.  This module keeps the name-level functions read by capture,
masking, the config schema and the rule wildcards.  Only torch is needed.
"""

from __future__ import annotations

from torch import nn

from apc.common.families import PROJECTIONS, Tensor, UnsupportedArchitecture, family_named
from apc.common.sites import decoder_layers, ffn_sites, model_family

__all__ = ["PROJECTIONS", "TABLE", "UnsupportedArchitecture", "decoder_layers", "mlp_projections", "projection",
           "projection_module", "projection_width", "site_widths"]

#: The Llama-style (``gated``) row of the layout table: projection -> module role and side.
#: ``down_in`` is the input of ``down_proj``, i.e. act(gate) * up, the intermediate neuron activation.
TABLE: dict[str, Tensor] = family_named("gated").projections


def mlp_projections(model: nn.Module) -> list[dict[str, nn.Module]]:
    """Per decoder layer, ``{role: module}`` of a dense FFN (``gated``: ``gate``, ``up``, ``down``).

    Mixture-of-experts models have no module per expert: use :func:`apc.common.sites.ffn_sites`.
    """
    sites = ffn_sites(model)
    if sites and sites[0].expert is not None:
        raise UnsupportedArchitecture(f"{type(model).__name__} is a mixture of experts: it has FFN sites per "
                                      "(layer, expert), not one module per projection and layer")
    return [s.modules for s in sites]


def projection(name: str) -> Tensor:
    """The ``gated`` table entry of ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return TABLE[name]
    except KeyError:
        raise ValueError(f"unknown projection {name!r}; expected one of {', '.join(TABLE)}") from None


def projection_module(mods: dict[str, nn.Module], name: str) -> nn.Module:
    """The module of one layer's ``mods`` (from :func:`mlp_projections` of a ``gated`` model) that carries ``name``."""
    return mods[projection(name).role]


def projection_width(model: nn.Module, name: str) -> int:
    """Number of neurons (features) of projection ``name`` in every site of ``model``."""
    return ffn_sites(model)[0].width(name)


def site_widths(model: nn.Module) -> dict[str, int]:
    """``{projection: width}`` for every projection of ``model``'s FFN family."""
    site = ffn_sites(model)[0]
    return {p: site.width(p) for p in model_family(model).projections}
