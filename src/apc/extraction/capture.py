"""Forward hooks that hand each MLP projection's activations to a callback.

One forward pass per window captures, for every decoder layer, the outputs of
``gate_proj``, ``up_proj`` and ``down_proj`` (gate before the activation
function) and the input of ``down_proj`` (``down_in`` = act(gate) * up).
Only torch is needed.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from apc.common.projections import PROJECTIONS, TABLE, mlp_projections, projection_module

#: callback(projection, layer, x) with ``x: (n_tokens, width)`` activations of one window.
Callback = Callable[[str, int, torch.Tensor], None]


class ProjectionCapture:
    """Context manager: while active, every forward pass calls ``callback`` per (projection, layer).

    ``skip_first``: drop sequence position 0 (the BOS token) before the callback.
    Memory stays bounded by one layer's activations: nothing is kept after the call.
    """

    def __init__(self, model: nn.Module, projections: list[str], callback: Callback, skip_first: bool = False):
        unknown = [p for p in projections if p not in PROJECTIONS]
        if unknown:
            raise ValueError(f"unknown projections {unknown}; expected some of {', '.join(PROJECTIONS)}")
        self.model = model
        self.projections = list(projections)
        self.callback = callback
        self.skip_first = skip_first
        self._handles: list = []

    def _emit(self, proj: str, layer: int, x: torch.Tensor) -> None:
        if self.skip_first:
            x = x[:, 1:]
        self.callback(proj, layer, x.reshape(-1, x.shape[-1]))

    def __enter__(self) -> "ProjectionCapture":
        for i, mods in enumerate(mlp_projections(self.model)):
            for proj in self.projections:
                module = projection_module(mods, proj)
                self._handles.append(module.register_forward_hook(self._hook(proj, i, TABLE[proj].side)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, proj: str, layer: int, side: str):
        def hook(module, inputs, output):
            self._emit(proj, layer, output if side == "output" else inputs[0])

        return hook
