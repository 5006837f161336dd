"""Forward hooks that hand each FFN projection's activations to a callback.

One forward pass per window captures, for every FFN site (a decoder layer, or a
(layer, expert) of a mixture of experts: :mod:`apc.common.sites`), the tensors
the layout table names: for a Llama-style FFN the outputs of ``gate_proj``,
``up_proj`` and ``down_proj`` (gate before the activation function) and the
input of ``down_proj`` (``down_in`` = act(gate) * up).  Only torch is needed.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from apc.common.projections import PROJECTIONS
from apc.common.sites import ffn_sites

#: callback(projection, site, x) with ``x: (n_tokens, width)`` activations of one window
#: (for an expert site: the tokens routed to it, in token order).
Callback = Callable[[str, int, torch.Tensor], None]
#: routing(layer, idx) with ``idx: (n_tokens, top_k)`` int64: the experts each token went to (MoE only).
Routing = Callable[[int, torch.Tensor], None]


class ProjectionCapture:
    """Context manager: while active, every forward pass calls ``callback`` per (projection, layer).

    ``skip_first``: drop sequence position 0 (the BOS token) before the callback.
    ``routing``: called once per MoE layer and forward with the router's choice, row-aligned.
    Memory stays bounded by one layer's activations: nothing is kept after the call.
    """

    def __init__(self, model: nn.Module, projections: list[str], callback: Callback, skip_first: bool = False,
                 routing: Routing | None = None):
        unknown = [p for p in projections if p not in PROJECTIONS]
        if unknown:
            raise ValueError(f"unknown projections {unknown}; expected some of {', '.join(PROJECTIONS)}")
        self.model = model
        self.projections = list(projections)
        self.callback = callback
        self.skip_first = skip_first
        self.routing = routing
        self._handles: list = []

    def __enter__(self) -> "ProjectionCapture":
        try:
            for site in ffn_sites(self.model):
                for proj in self.projections:
                    self._handles.append(site.observe(proj, self._hook(proj, site.index), self.skip_first))
                if self.routing is not None and site.expert == 0:
                    self._handles.append(site.observe_routing(
                        lambda idx, l=site.layer: self.routing(l, idx), self.skip_first))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, proj: str, index: int):
        return lambda rows: self.callback(proj, index, rows)
