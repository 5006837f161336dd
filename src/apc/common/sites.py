"""FFN sites: the (virtual) layers whose projections are captured and masked.

:func:`ffn_sites` reads the layout table (:mod:`apc.common.families`) and returns
one :class:`Site` per decoder layer, or per (layer, expert) for a
mixture-of-experts model (site ``l * n_experts + e``).  A site hides where its
tensors live: capture calls :meth:`Site.observe`, masking :meth:`Site.replace`,
the predictors :meth:`Site.on_ffn_input`.  Only torch is needed.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from apc.common.expert_sites import expert_sites, use_eager_experts
from apc.common.families import FAMILIES, Family, Tensor, UnsupportedArchitecture, projection_tensor


def _get(obj, path: str):
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers of ``model``, at the first path of any family that holds one."""
    paths = list(dict.fromkeys(p for f in FAMILIES for p in f.layers))
    for path in paths:
        obj = _get(model, path)
        if isinstance(obj, nn.ModuleList) and len(obj) > 0:
            return obj
    raise UnsupportedArchitecture(
        f"unsupported architecture {type(model).__name__}: no decoder layers at any of {', '.join(paths)}; "
        f"top-level modules: {', '.join(n for n, _ in model.named_children()) or 'none'}")


def _resolve(family: Family, layer: nn.Module) -> tuple[nn.Module, dict[str, nn.Module], bool] | None:
    """``(ffn module, {role: module}, flat)`` of ``layer`` under ``family``, or None if a role is missing;
    ``flat``: the FFN sees its tokens as ``(batch * seq, d_model)`` rows."""
    for path in family.ffn:
        ffn = _get(layer, path) if path else layer
        if ffn is None:
            continue
        mods = {}
        for role, names in family.modules.items():
            found = next((getattr(ffn, n) for n in names if isinstance(getattr(ffn, n, None), nn.Module)), None)
            if found is None:
                break
            mods[role] = found
        else:
            return ffn, mods, path in family.flat_ffn
    return None


def _module_names(layer: nn.Module, depth: int = 2) -> str:
    names = [n for n, _ in layer.named_modules() if n and n.count(".") < depth]
    return ", ".join(names) or "none"


def model_family(model: nn.Module) -> Family:
    """The first row of the layout table that layer 0 of ``model`` matches."""
    layer0 = decoder_layers(model)[0]
    for family in FAMILIES:
        if _resolve(family, layer0) is not None:
            return family
    known = "; ".join(f"{f.name} ({f.models}): {', '.join('/'.join(n) for n in f.modules.values())}" for f in FAMILIES)
    raise UnsupportedArchitecture(
        f"unsupported FFN layout in {type(model).__name__}: layer 0 has modules {_module_names(layer0)}; "
        f"expected one of {known}")


# -- dense sites (one nn.Module per role) ------------------------------------------------------


class _Handles:
    """Several hook handles removed as one."""

    def __init__(self, *handles):
        self.handles = handles

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _features(module: nn.Module) -> tuple[int, int]:
    """``(in, out)`` features of a linear map: ``nn.Linear`` or GPT-2's ``Conv1D`` (weight ``(in, out)``)."""
    if hasattr(module, "nf") and hasattr(module, "nx"):
        return int(module.nx), int(module.nf)
    return int(module.in_features), int(module.out_features)


class Site:
    """One FFN site.  ``layer``: decoder layer; ``expert``: expert index or None.

    ``positional``: hooked tensors are ``(batch, seq, width)`` (masking skips position 0 itself);
    False for expert sites, whose tensors are the routed rows ``(n, width)`` with position 0
    already handled by :meth:`replace`.
    """

    positional = True

    def __init__(self, index: int, layer: int, family: Family, modules: dict[str, nn.Module],
                 decoder_layer: nn.Module | None = None):
        self.index, self.layer, self.expert, self.family, self.modules = index, layer, None, family, modules
        self.decoder_layer = decoder_layer  # set for a flat FFN: its input gives the sequence length
        self._seq_len: int | None = None

    def __repr__(self) -> str:
        return f"Site({self.family.name}, layer={self.layer}, expert={self.expert})"

    def tensor(self, proj: str) -> Tensor:
        return projection_tensor(self.family, proj)

    def module(self, proj: str) -> nn.Module:
        """The module whose input or output holds ``proj``."""
        return self.modules[self.tensor(proj).role]

    def __getitem__(self, role: str) -> nn.Module:
        """The module playing ``role`` (``site["gate"]`` is ``gate_proj`` of a Llama-style FFN)."""
        try:
            return self.modules[role]
        except KeyError:
            raise UnsupportedArchitecture(f"this {self.family.name} FFN ({self.family.models}) has no {role!r} "
                                          f"module; its modules: {', '.join(self.modules)}") from None

    def width(self, proj: str) -> int:
        """Neurons (features) of ``proj``."""
        t = self.tensor(proj)
        n_in, n_out = _features(self.modules[t.role])
        return n_in if t.side == "input" else (n_out if t.half is None else n_out // 2)

    def device(self, proj: str) -> torch.device:
        return self.module(proj).weight.device

    @property
    def d_model(self) -> int:
        """Width of the FFN input."""
        return _features(self.modules[self.family.first])[0]

    @property
    def ffn_input_device(self) -> torch.device:
        return self.modules[self.family.first].weight.device

    def down_weight(self) -> torch.Tensor:
        """``(d_model, width of down_in)``: the weight of the second product."""
        m = self.module("down_in")
        return m.weight.t() if hasattr(m, "nf") else m.weight

    def _record_seq_len(self, module, args, kwargs) -> None:
        self._seq_len = int((args[0] if args else kwargs["hidden_states"]).shape[-2])

    def _with_seq_len(self, handle):
        """``handle`` plus, for a flat FFN, a pre-hook recording the sequence length of its decoder layer."""
        if self.decoder_layer is None:
            return handle
        seq = self.decoder_layer.register_forward_pre_hook(self._record_seq_len, with_kwargs=True)
        return _Handles(handle, seq)

    def _unflat(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        """``fn`` applied to ``(batch, seq, width)``: rows ``(batch * seq, width)`` of a flat FFN are viewed so."""
        if self.decoder_layer is None:
            return fn
        return lambda x: fn(self._seq_view(x)).view(x.shape)

    def _seq_view(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(-1, self._seq_len, x.shape[-1])

    def observe(self, proj: str, fn: Callable[[torch.Tensor], None], skip_first: bool):
        """Call ``fn(rows)`` with ``rows: (n_tokens, width)`` of ``proj`` at every forward; position 0
        of each sequence dropped when ``skip_first``.  Returns a handle with ``remove()``."""
        t = self.tensor(proj)

        def emit(x: torch.Tensor) -> None:
            if t.half is not None:
                x = x.chunk(2, dim=-1)[t.half]
            if skip_first:
                x = x[:, 1:]
            fn(x.reshape(-1, x.shape[-1]))

        emit_any = emit if self.decoder_layer is None else (lambda x: emit(self._seq_view(x)))
        return self._with_seq_len(self.modules[t.role].register_forward_hook(
            lambda m, inputs, output: emit_any(output if t.side == "output" else inputs[0])))

    def replace(self, proj: str, fn: Callable[[torch.Tensor], torch.Tensor], skip_first: bool = False):
        """Replace the tensor ``x: (batch, seq, width)`` of ``proj`` by ``fn(x)`` at every forward
        (``skip_first`` is left to ``fn`` here).  Returns a handle with ``remove()``."""
        return self._with_seq_len(self._replace(proj, self._unflat(fn)))

    def _replace(self, proj: str, fn: Callable[[torch.Tensor], torch.Tensor]):
        t = self.tensor(proj)
        module = self.modules[t.role]
        if t.side == "input":
            return module.register_forward_pre_hook(lambda m, args: (fn(args[0]),) + tuple(args[1:]))
        if t.half is None:
            return module.register_forward_hook(lambda m, args, out: fn(out))

        def halves(out: torch.Tensor) -> torch.Tensor:
            parts = list(out.chunk(2, dim=-1))
            parts[t.half] = fn(parts[t.half])
            return torch.cat(parts, dim=-1)

        return module.register_forward_hook(lambda m, args, out: halves(out))

    def on_ffn_input(self, fn: Callable[[torch.Tensor], None]):
        """Call ``fn(x)`` with the FFN input ``(batch, seq, d_model)`` before every hooked tensor of the site."""
        first = self.modules[self.family.first]
        if self.decoder_layer is None:
            return first.register_forward_pre_hook(lambda m, args: fn(args[0]))
        return self._with_seq_len(first.register_forward_pre_hook(lambda m, args: fn(self._seq_view(args[0]))))


def ffn_sites(model: nn.Module) -> list[Site]:
    """Every FFN site of ``model`` in order (layers, then experts within a layer)."""
    family = model_family(model)
    if family.experts:
        return expert_sites(model, family, decoder_layers(model), _resolve)
    sites = []
    for i, layer in enumerate(decoder_layers(model)):
        found = _resolve(family, layer)
        if found is None:
            raise UnsupportedArchitecture(
                f"unsupported FFN layout in {type(model).__name__}: layer 0 is {family.name} ({family.models}) "
                f"but layer {i} has modules {_module_names(layer)}")
        sites.append(Site(i, i, family, found[1], layer if found[2] else None))
    return sites


def prepare_for_sites(model: nn.Module) -> nn.Module:
    """Make ``model``'s own forward the one the sites reproduce: a mixture-of-experts model runs its
    experts' eager per-expert loop (transformers may pick a grouped kernel), others are unchanged."""
    try:
        family = model_family(model)
    except UnsupportedArchitecture:
        return model  # the error comes where its sites are asked for
    if family.experts:
        use_eager_experts(model)
    return model
