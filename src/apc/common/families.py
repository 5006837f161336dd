"""The layout table: where each FFN family keeps its decoder layers and projections.

One :class:`Family` row per kind of feed-forward block.  A row says where the
decoder layers are, which module of a layer's FFN carries each role, and for
every projection the module, side and half of the tensor it names.  Capture,
masking, the config check and the model manifest all read this table
(through :mod:`apc.common.sites`); nothing else knows attribute names.

==========  ===============================  ===========================================
family      models                           projections (tensor)
==========  ===============================  ===========================================
``gated``   Llama, Mistral, Qwen2/3, Gemma   gate/up/down = outputs of gate_proj, up_proj,
                                             down_proj; down_in = input of down_proj
``fused``   Phi-3                            gate/up = first/second half of the output of
                                             gate_up_proj; down, down_in as ``gated``
``plain``   OPT, GPT-2, GPT-NeoX, Falcon     fc1 = output of the first product (before the
                                             activation); down_in = input of the second
                                             product, act(fc1); down = its output
``moe``     Mixtral, OLMoE                   per (layer, expert): gate/up = halves of the
                                             expert's gate_up product, down_in = act(gate)
                                             * up, down = the expert's output (before the
                                             routing weight), over the tokens routed to it
==========  ===============================  ===========================================

Only the standard library is needed here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Tensor:
    """Where one projection lives in a layer's FFN: the ``side`` (``"output"`` or ``"input"``) of the
    module playing ``role``; ``half`` 0 or 1 picks the first or second half of a fused output."""

    role: str
    side: str
    half: int | None = None


_GATED = {"gate": Tensor("gate", "output"), "up": Tensor("up", "output"),
          "down": Tensor("down", "output"), "down_in": Tensor("down", "input")}


@dataclass(frozen=True)
class Family:
    """One row of the layout table.

    ``layers``: dotted paths from the model to its list of decoder layers (the first that exists wins).
    ``ffn``: paths from a decoder layer to the module holding the roles (``""`` = the layer itself).
    ``modules``: role -> attribute names that may carry it (the first present wins).
    ``flat_ffn``: the entries of ``ffn`` whose tensors arrive flattened to ``(batch * seq, width)``
    (OPT reshapes before its FFN); sites there restore ``(batch, seq, width)`` for the hooks.
    ``first``: the role whose input is the FFN input (the predictors' input).
    ``projections``: projection name -> :class:`Tensor`.
    ``model_types``: ``config.json`` ``model_type`` values known to be this family (config-time checks).
    ``experts``: a mixture-of-experts block (``modules`` are the router and the fused experts).
    """

    name: str
    models: str
    layers: tuple[str, ...]
    ffn: tuple[str, ...]
    modules: dict[str, tuple[str, ...]]
    first: str
    projections: dict[str, Tensor]
    model_types: tuple[str, ...] = ()
    experts: bool = False
    flat_ffn: tuple[str, ...] = ()


_DECODER = ("model.layers", "model.language_model.layers", "language_model.model.layers")

#: The layout table, tried in this order on layer 0 of a model.
FAMILIES: tuple[Family, ...] = (
    Family("gated", "Llama, Mistral, Qwen2/3, Gemma, SmolLM", _DECODER, ("mlp",),
           {"gate": ("gate_proj",), "up": ("up_proj",), "down": ("down_proj",)}, "gate", _GATED,
           model_types=("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")),
    Family("fused", "Phi-3", _DECODER, ("mlp",),
           {"gate_up": ("gate_up_proj",), "down": ("down_proj",)}, "gate_up",
           {"gate": Tensor("gate_up", "output", 0), "up": Tensor("gate_up", "output", 1),
            "down": Tensor("down", "output"), "down_in": Tensor("down", "input")},
           model_types=("phi3",)),
    Family("plain", "OPT, GPT-2, GPT-NeoX/Pythia, Falcon",
           ("model.decoder.layers", "transformer.h", "gpt_neox.layers"), ("mlp", ""),
           {"fc1": ("fc1", "c_fc", "dense_h_to_4h"), "fc2": ("fc2", "c_proj", "dense_4h_to_h")}, "fc1",
           {"fc1": Tensor("fc1", "output"), "down": Tensor("fc2", "output"), "down_in": Tensor("fc2", "input")},
           model_types=("opt", "gpt2", "gpt_neox", "falcon"), flat_ffn=("",)),
    Family("moe", "Mixtral, OLMoE", _DECODER, ("mlp", "block_sparse_moe"),
           {"router": ("gate", "router"), "experts": ("experts",)}, "experts",
           {"gate": Tensor("experts", "output", 0), "up": Tensor("experts", "output", 1),
            "down": Tensor("experts", "output"), "down_in": Tensor("experts", "input")},
           model_types=("mixtral", "olmoe"), experts=True),
)

#: Every projection name of any family, in a fixed order (the config schema's enum, the rule wildcards).
PROJECTIONS: tuple[str, ...] = ("gate", "up", "down", "down_in", "fc1")


def family_named(name: str) -> Family:
    """The table row called ``name``."""
    for f in FAMILIES:
        if f.name == name:
            return f
    raise KeyError(name)


def family_of_model_type(model_type: str | None) -> Family | None:
    """The family a ``config.json`` ``model_type`` is known to have, or None (then layer 0 decides)."""
    for f in FAMILIES:
        if model_type in f.model_types:
            return f
    return None


def unsupported_projections(family: Family, projections) -> list[str]:
    """The names in ``projections`` that ``family`` does not have."""
    return [p for p in projections if p not in family.projections]


class UnsupportedArchitecture(ValueError):
    """The model's FFN matches no row of the layout table."""


def projection_tensor(family: Family, proj: str) -> Tensor:
    """The :class:`Tensor` of projection ``proj`` in ``family``; :class:`UnsupportedArchitecture` if it has none."""
    try:
        return family.projections[proj]
    except KeyError:
        raise UnsupportedArchitecture(f"projection {proj!r} is not in this {family.name} FFN "
                                      f"({family.models}); its projections are "
                                      f"{', '.join(family.projections)}") from None


def check_projections(family: Family, projections, key: str = "extract.projections") -> None:
    """``ValueError`` (one line naming ``key``) unless ``family`` has every projection in ``projections``."""
    bad = unsupported_projections(family, projections)
    if bad:
        raise ValueError(f"config key '{key}': {', '.join(bad)} not in this {family.name} FFN "
                         f"({family.models}); its projections are {', '.join(family.projections)}")
