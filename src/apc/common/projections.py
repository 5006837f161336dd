"""Locate the gated MLP projections of a decoder-only transformer.

Supported: models whose decoder layers sit at ``model.layers`` (Llama, Mistral,
Qwen2/3, Gemma, SmolLM, ...) and whose ``mlp`` has ``gate_proj``, ``up_proj``
and ``down_proj``.  Only torch is needed here.
"""

from __future__ import annotations

from torch import nn

from dataclasses import dataclass


@dataclass(frozen=True)
class Projection:
    """A hooked tensor: the ``side`` (``"output"`` or ``"input"``) of MLP module ``module``."""

    module: str
    side: str

    def width(self, linear: nn.Linear) -> int:
        """Neurons of this tensor given its module."""
        return linear.out_features if self.side == "output" else linear.in_features


#: The one table of projections, read by capture, masking, the config schema and the rule wildcards.
#: ``down_in`` is the input of ``down_proj``, i.e. act(gate) * up, the intermediate neuron activation.
TABLE = {
    "gate": Projection("gate", "output"),
    "up": Projection("up", "output"),
    "down": Projection("down", "output"),
    "down_in": Projection("down", "input"),
}
PROJECTIONS = tuple(TABLE)

_LAYER_PATHS = ("model.layers", "model.language_model.layers", "language_model.model.layers")
_MLP_NAMES = ("gate_proj", "up_proj", "down_proj")


class UnsupportedArchitecture(ValueError):
    """The model has no Llama-style gated MLP that this project can hook."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Return the list of decoder layers of ``model``."""
    for path in _LAYER_PATHS:
        obj = model
        for part in path.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise UnsupportedArchitecture(
        f"unsupported architecture {type(model).__name__}: expected decoder layers at one of "
        f"{', '.join(_LAYER_PATHS)} (Llama, Mistral, Qwen or Gemma style)"
    )


def mlp_projections(model: nn.Module) -> list[dict[str, nn.Linear]]:
    """Per decoder layer, ``{'gate': gate_proj, 'up': up_proj, 'down': down_proj}``.

    ``down_in`` has no module of its own: it is the input of ``down``.
    """
    out = []
    for i, layer in enumerate(decoder_layers(model)):
        mlp = getattr(layer, "mlp", None)
        missing = [n for n in _MLP_NAMES if mlp is None or not hasattr(mlp, n)]
        if missing:
            raise UnsupportedArchitecture(
                f"unsupported architecture {type(model).__name__}: layer {i} has no "
                f"mlp.{', mlp.'.join(missing)}; expected a gated MLP with mlp.gate_proj, "
                "mlp.up_proj and mlp.down_proj (Llama, Mistral, Qwen or Gemma style)"
            )
        out.append({"gate": mlp.gate_proj, "up": mlp.up_proj, "down": mlp.down_proj})
    return out


def projection(name: str) -> Projection:
    """The table entry of ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return TABLE[name]
    except KeyError:
        raise ValueError(f"unknown projection {name!r}; expected one of {', '.join(PROJECTIONS)}") from None


def projection_module(mods: dict[str, nn.Linear], name: str) -> nn.Linear:
    """The module of one layer's ``mods`` (from :func:`mlp_projections`) that carries ``name``."""
    return mods[projection(name).module]


def projection_width(model: nn.Module, name: str) -> int:
    """Number of neurons (features) of projection ``name`` in every layer."""
    return projection(name).width(projection_module(mlp_projections(model)[0], name))
