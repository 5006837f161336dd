"""Mixture-of-experts sites: one per (layer, expert), over the tokens routed to that expert.

transformers keeps a layer's experts as fused 3-D parameters (``MixtralExperts``,
``OlmoeExperts``: ``gate_up_proj (E, 2 * width, d_model)``, ``down_proj (E, d_model,
width)``) and runs them in a Python loop, so there is no per-expert module to hook.
While any site of a layer is observed or replaced, :class:`ExpertTaps` swaps the
experts module's ``forward`` for :func:`ExpertTaps.forward`, the same eager loop
operation for operation, with a tap on each expert's ``gate``, ``up`` (halves of
the gate-up product), ``down_in`` (act(gate) * up) and ``down`` (the expert's output
before the routing weight).  The routing is the model's own: the router's top-k
choice arrives as the experts' ``top_k_index`` argument and is passed on to
routing observers row-aligned with the tokens.  Only torch is needed.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from apc.common.families import Family, UnsupportedArchitecture, projection_tensor

_TAPS: "weakref.WeakKeyDictionary[nn.Module, ExpertTaps]" = weakref.WeakKeyDictionary()


class _Handle:
    def __init__(self, remove: Callable[[], None]):
        self._remove = remove

    def remove(self) -> None:
        if self._remove is not None:
            self._remove()
            self._remove = None


class ExpertTaps:
    """The taps of one layer's experts module ``experts`` inside MoE block ``block``.

    ``taps[(expert, proj)]``: list of ``(kind, fn, skip_first)``, kind ``"observe"`` or ``"replace"``;
    ``routing``: list of ``(fn, skip_first)`` called with ``(n_tokens, top_k)`` int64 expert ids.
    """

    def __init__(self, experts: nn.Module, block: nn.Module):
        self.experts, self.block = experts, block
        self.taps: dict[tuple[int, str], list] = {}
        self.routing: list = []
        self.seq_len: int | None = None
        self._block_hook = None

    def add(self, key, entry) -> _Handle:
        """Register ``entry`` under ``key`` (``"routing"`` or ``(expert, proj)``); the forward is swapped
        while any entry is registered."""
        bucket = self.routing if key == "routing" else self.taps.setdefault(key, [])
        if not self._installed:
            self.experts.forward = self.forward
            self._block_hook = self.block.register_forward_pre_hook(self._record_shape)
        bucket.append(entry)

        def remove():
            bucket.remove(entry)
            if not self.routing and not any(self.taps.values()):
                del self.experts.forward  # back to the class's forward
                self._block_hook.remove()
                self._block_hook = None

        return _Handle(remove)

    @property
    def _installed(self) -> bool:
        return self._block_hook is not None

    def _record_shape(self, module, args) -> None:
        self.seq_len = int(args[0].shape[-2])

    def _not_first(self, token_idx: torch.Tensor) -> torch.Tensor:
        """Bool ``(n,)``: the flat token indices that are not position 0 of their sequence."""
        return token_idx % self.seq_len != 0

    def _tap(self, expert: int, proj: str, x: torch.Tensor, token_idx: torch.Tensor) -> torch.Tensor:
        """Run the taps of ``(expert, proj)`` on ``x: (n_routed, width)`` (rows of ``token_idx``). A replacing
        tap writes into ``x`` in place: ``x`` keeps its layout (gate and up are strided halves of one product),
        so the products that follow run exactly as in the untapped forward, to the last bit on every CPU."""
        for kind, fn, skip in self.taps.get((expert, proj), ()):
            if kind == "observe":
                order = token_idx.argsort()
                rows, tok = x[order], token_idx[order]
                fn(rows[self._not_first(tok)] if skip else rows)
            elif skip:
                keep = self._not_first(token_idx).nonzero().squeeze(1)
                x.index_copy_(0, keep, fn(x.index_select(0, keep)))
            else:
                x.copy_(fn(x))
        return x

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        """The experts' eager loop with taps: ``hidden_states (n_tokens, d_model)``, ``top_k_index
        (n_tokens, k)`` int64, ``top_k_weights (n_tokens, k)`` -> ``(n_tokens, d_model)``."""
        m = self.experts
        for fn, skip in self.routing:
            idx = top_k_index.view(-1, self.seq_len, top_k_index.shape[-1])
            fn((idx[:, 1:] if skip else idx).reshape(-1, top_k_index.shape[-1]))
        final_hidden_states = torch.zeros_like(hidden_states)
        with torch.no_grad():
            expert_mask = torch.nn.functional.one_hot(top_k_index, num_classes=m.num_experts + 1)
            expert_mask = expert_mask.permute(2, 1, 0)
            expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        seen = set()
        for expert_idx in expert_hit:
            expert_idx = expert_idx[0]
            if expert_idx == m.num_experts:
                continue
            e = int(expert_idx)
            seen.add(e)
            top_k_pos, token_idx = torch.where(expert_mask[expert_idx])
            current_state = hidden_states[token_idx]
            gate, up = F.linear(current_state, m.gate_up_proj[expert_idx]).chunk(2, dim=-1)
            gate = self._tap(e, "gate", gate, token_idx)
            up = self._tap(e, "up", up, token_idx)
            current_hidden_states = m.act_fn(gate) * up
            current_hidden_states = self._tap(e, "down_in", current_hidden_states, token_idx)
            current_hidden_states = F.linear(current_hidden_states, m.down_proj[expert_idx])
            current_hidden_states = self._tap(e, "down", current_hidden_states, token_idx)
            current_hidden_states = current_hidden_states * top_k_weights[token_idx, top_k_pos, None]
            final_hidden_states.index_add_(0, token_idx, current_hidden_states.to(final_hidden_states.dtype))
        self._observe_idle(seen, hidden_states)
        return final_hidden_states

    def _observe_idle(self, seen: set, hidden_states: torch.Tensor) -> None:
        """Observers of experts that got no token see zero rows, so every site has a record."""
        for (e, proj), entries in self.taps.items():
            if e in seen:
                continue
            width = self.experts.down_proj.shape[1] if proj == "down" else self.experts.down_proj.shape[2]
            for kind, fn, _ in entries:
                if kind == "observe":
                    fn(hidden_states.new_zeros((0, width)))


def _taps(experts: nn.Module, block: nn.Module) -> ExpertTaps:
    t = _TAPS.get(experts)
    if t is None:
        t = _TAPS[experts] = ExpertTaps(experts, block)
    return t


def _check_experts(experts: nn.Module, model_name: str) -> None:
    gu, down = getattr(experts, "gate_up_proj", None), getattr(experts, "down_proj", None)
    ok = (isinstance(gu, torch.Tensor) and isinstance(down, torch.Tensor) and gu.dim() == 3 and down.dim() == 3
          and hasattr(experts, "num_experts") and hasattr(experts, "act_fn")
          and not getattr(experts, "has_bias", False) and not getattr(experts, "is_transposed", False)
          and getattr(experts, "has_gate", True) and gu.shape[1] == 2 * down.shape[2])
    if not ok:
        raise UnsupportedArchitecture(
            f"unsupported experts in {model_name}: {type(experts).__name__} is not the fused gated layout "
            "(gate_up_proj (E, 2*width, d_model), down_proj (E, d_model, width), no bias, not transposed)")


class ExpertSite:
    """Site of expert ``expert`` in decoder layer ``layer`` (see :class:`apc.common.sites.Site`)."""

    positional = False

    def __init__(self, index: int, layer: int, expert: int, family: Family, block: nn.Module, experts: nn.Module):
        self.index, self.layer, self.expert, self.family = index, layer, expert, family
        self.block, self.experts = block, experts
        self.modules = {"experts": experts}

    def __repr__(self) -> str:
        return f"ExpertSite(layer={self.layer}, expert={self.expert})"

    def tensor(self, proj: str):
        return projection_tensor(self.family, proj)

    def module(self, proj: str) -> nn.Module:
        self.tensor(proj)
        return self.experts

    def __getitem__(self, role: str) -> nn.Module:
            raise UnsupportedArchitecture(f"an expert site has no {role!r} module: its experts are fused 3-D "
                                      "parameters, reached through observe() and replace()")

    def width(self, proj: str) -> int:
        self.tensor(proj)
        return int(self.experts.down_proj.shape[1] if proj == "down" else self.experts.down_proj.shape[2])

    def device(self, proj: str) -> torch.device:
        return self.experts.down_proj.device

    @property
    def d_model(self) -> int:
        return int(self.experts.gate_up_proj.shape[2])

    @property
    def ffn_input_device(self) -> torch.device:
        return self.experts.down_proj.device

    def down_weight(self) -> torch.Tensor:
        """``(d_model, width)``: this expert's down product."""
        return self.experts.down_proj[self.expert]

    def observe(self, proj: str, fn: Callable[[torch.Tensor], None], skip_first: bool) -> _Handle:
        """``fn(rows)``, ``rows: (n_routed, width)`` in token order, position-0 tokens dropped when
        ``skip_first``; an expert without tokens in a forward sees ``(0, width)``."""
        self.tensor(proj)
        return _taps(self.experts, self.block).add((self.expert, proj), ("observe", fn, skip_first))

    def replace(self, proj: str, fn: Callable[[torch.Tensor], torch.Tensor], skip_first: bool = False) -> _Handle:
        """Replace the routed rows ``(n, width)`` of ``proj`` by ``fn(rows)``; with ``skip_first`` the
        rows of position-0 tokens are left as they are and not passed to ``fn``."""
        self.tensor(proj)
        return _taps(self.experts, self.block).add((self.expert, proj), ("replace", fn, skip_first))

    def observe_routing(self, fn: Callable[[torch.Tensor], None], skip_first: bool) -> _Handle:
        """``fn(idx)`` with the layer's routing ``idx: (n_tokens, top_k)`` int64, row-aligned with the
        tokens (position 0 dropped when ``skip_first``)."""
        return _taps(self.experts, self.block).add("routing", (fn, skip_first))

    @property
    def n_experts(self) -> int:
        return int(self.experts.num_experts)

    @property
    def top_k(self) -> int:
        router = next((getattr(self.block, n) for n in self.family.modules["router"] if hasattr(self.block, n)))
        return int(getattr(router, "top_k", getattr(self.block, "top_k", 0)))

    def on_ffn_input(self, fn):
            raise UnsupportedArchitecture("FFN-input predictors are not available for mixture-of-experts sites "
                                      "(each expert sees only its routed tokens)")


def expert_sites(model: nn.Module, family: Family, layers: nn.ModuleList, resolve) -> list[ExpertSite]:
    """One :class:`ExpertSite` per (layer, expert), index ``layer * n_experts + expert``."""
    sites: list[ExpertSite] = []
    n_experts = None
    for i, layer in enumerate(layers):
        found = resolve(family, layer)
        if found is None:
            raise UnsupportedArchitecture(f"unsupported FFN layout in {type(model).__name__}: layer 0 is a "
                                          f"mixture of experts but layer {i} is not")
        block, mods, _ = found
        _check_experts(mods["experts"], type(model).__name__)
        if hasattr(block, "shared_expert"):
            raise UnsupportedArchitecture(f"unsupported experts in {type(model).__name__}: layer {i} has a shared "
                                          "expert beside its routed experts, which no layout row covers")
        e_n = int(mods["experts"].num_experts)
        if n_experts not in (None, e_n):
            raise UnsupportedArchitecture(f"layers of {type(model).__name__} have {n_experts} and {e_n} experts")
        n_experts = e_n
        sites += [ExpertSite(i * e_n + e, i, e, family, block, mods["experts"]) for e in range(e_n)]
    return sites


def use_eager_experts(model: nn.Module) -> None:
    """Run the experts with transformers' eager loop, the computation :class:`ExpertTaps` reproduces."""
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("eager")
    else:
        model.config._experts_implementation = "eager"
