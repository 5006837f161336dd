"""Routers of neuron experts (:mod:`apc.clustering.experts`): FFN input ``x: (n, d_model)`` -> expert
scores ``(n, E)``; a token runs the shared set plus its ``k`` highest-scored experts.

- :class:`AnalyticRouter` is CMoE's (JarvisPei/CMoE, ``CMoE_utils.construct_moe`` and
  ``CMoE_model.Router.forward``): each expert is represented by one neuron, the member closest to
  its centroid; the router's two matrices are that neuron's ``up`` and ``gate`` rows, L2-normalised,
  and the score is ``|(û_r . x) * act(ĝ_r . x)|``.  (CMoE adds a softmax, which keeps the top-k, and
  a load-balancing bias it tunes on data: left out, as nothing here is trained.)  No training:
  ``2 * 2 * d_model * E`` FLOPs per token.
- :class:`OracleRouter` scores each expert by the token's true activation mass ``sum |act(g) * u|``
  over its members: it runs the dense ``gate``/``up`` products, so it is the upper bound, not a
  deployable router (its FLOPs are reported as those of the full ``gate`` and ``up`` products).
- The learned router is :class:`apc.prediction.models.ClusterPredictor` trained on expert ids
  (:func:`apc.prediction.experts.fit_expert_router`).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .experts import ExpertSet, expert_masks

__all__ = ["AnalyticRouter", "OracleRouter", "ffn_weights", "representatives"]


def representatives(bits: torch.Tensor, es: ExpertSet) -> torch.Tensor:
    """``(E,)`` int64: per expert, the member whose activation column over ``bits: (T, width)`` bool train
    tokens is nearest (L1, as CMoE) to the expert's mean column; ties -> lowest neuron id."""
    b = bits.float()
    out = []
    for m in es.members:
        cols = b[:, torch.from_numpy(m).to(b.device)]  # (T, size)
        centre = cols.mean(1, keepdim=True)
        out.append(int(m[int((cols - centre).abs().sum(0).argmin())]))
    return torch.tensor(out, dtype=torch.int64)


class AnalyticRouter(nn.Module):
    """CMoE's training-free router from representative neurons' ``gate``/``up`` rows.

    ``gate_rows, up_rows: (E, d_model)`` (normalised here); ``act``: the FFN's activation.
    """

    def __init__(self, gate_rows: torch.Tensor, up_rows: torch.Tensor, act: Callable = F.silu):
        super().__init__()
        if gate_rows.shape != up_rows.shape or gate_rows.dim() != 2:
            raise ValueError(f"gate and up rows must be the same (E, d_model) shape, got "
                             f"{tuple(gate_rows.shape)} and {tuple(up_rows.shape)}")
        self.register_buffer("gate", F.normalize(gate_rows.detach().float(), p=2, dim=1))
        self.register_buffer("up", F.normalize(up_rows.detach().float(), p=2, dim=1))
        self.act = act
        self.d_model, self.k = int(gate_rows.shape[1]), int(gate_rows.shape[0])

    @classmethod
    def from_weights(cls, gate_weight: torch.Tensor, up_weight: torch.Tensor, reps: torch.Tensor,
                     act: Callable = F.silu) -> "AnalyticRouter":
        """From the FFN's ``gate``/``up`` weights ``(d_ff, d_model)`` and representative neurons ``reps: (E,)``."""
        idx = reps.to(gate_weight.device).long()
        return cls(gate_weight.index_select(0, idx), up_weight.index_select(0, idx), act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.gate.dtype)
        return ((x @ self.up.T) * self.act(x @ self.gate.T)).abs()

    def flops_per_token(self) -> int:
        return 2 * 2 * self.d_model * self.k


class OracleRouter(nn.Module):
    """Expert scores = the token's true activation mass per expert (upper bound; runs gate and up densely).

    ``gate_weight, up_weight: (d_ff, d_model)``; ``es``: the layer's experts.
    """

    def __init__(self, gate_weight: torch.Tensor, up_weight: torch.Tensor, es: ExpertSet, act: Callable = F.silu):
        super().__init__()
        self.register_buffer("gate", gate_weight.detach().float())
        self.register_buffer("up", up_weight.detach().float())
        self.register_buffer("onehot", expert_masks(es, with_shared=False).T.float())
        self.act = act
        self.d_model, self.k = int(gate_weight.shape[1]), es.n_experts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.gate.dtype)
        return (self.act(x @ self.gate.T) * (x @ self.up.T)).abs() @ self.onehot

    def flops_per_token(self) -> int:
        return 2 * 2 * self.d_model * int(self.gate.shape[0])


def ffn_weights(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor, Callable]]:
    """``[(gate_weight, up_weight, act)]`` per decoder layer of a gated (Llama-style) FFN: ``(d_ff, d_model)``
    weights and the FFN's activation (``act_fn`` of the module holding ``gate``; SiLU if it has none)."""
    from apc.common.sites import decoder_layers, ffn_sites

    sites = ffn_sites(model)
    if any(s.expert is not None for s in sites):
        raise ValueError("neuron experts need a dense gated FFN per layer, not a mixture-of-experts model")
    out = []
    for site, layer in zip(sites, decoder_layers(model)):
        act = next((m.act_fn for m in layer.modules() if hasattr(m, "act_fn") and callable(m.act_fn)), F.silu)
        out.append((site["gate"].weight, site["up"].weight, act))
    return out
