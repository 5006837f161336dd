"""Cluster masks scored through the cluster-grouped FFN kernel (``perplexity.kernel: grouped``).

Instead of running the dense FFN and zeroing ``down_in`` outside the kept neurons (the hook path of
:mod:`apc.perplexity.masking`), each decoder layer's MLP runs :func:`apc.deploy.ffn.grouped_ffn`:
tokens are grouped by cluster id and each group computes only its centroid's neurons.  The result
is the same masked FFN (to float rounding), so the perplexity is the hook path's.

Modes: ``centroid_only`` (the oracle id: the nearest centroid of the token's own pattern, which
needs the layer's dense intermediate first, as in the hook path) and ``predicted`` with ``top_m = 1``
(the id the predictor scores highest from the MLP input).  Per-layer centroid sets (per-layer scope)
or one pooled set; plain cells only (no product groups, no weighted assignment).  Position 0 (BOS)
keeps every neuron, as the hook path's ``skip_first_position``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from apc.common.progress import get_logger
from apc.common.projections import decoder_layers

log = get_logger("apc.perplexity.grouped")

GROUPED_MODES = ("centroid_only", "predicted")


def supports_grouped(mode: str, projections: Sequence[str], *, top_m: int = 1, groups=None,
                     assign_weights=None) -> str | None:
    """None when ``mode`` can run through the grouped kernel, else the reason it cannot."""
    if mode not in GROUPED_MODES:
        return f"mode {mode!r} is not a cluster mode"
    if tuple(projections) != ("down_in",):
        return f"the grouped kernel masks down_in only, not {list(projections)}"
    if mode == "predicted" and int(top_m) != 1:
        return "a union of top-m centroids is no single group"
    if any(int(g) != 1 for g in (groups or {}).values()):
        return "product cells have several ids per token"
    if assign_weights:
        return "weighted cells are assigned by missed weight"
    return None


class GroupedInterventions:
    """Handle of :func:`install_grouped`, with the kept-share statistics of
    :class:`apc.perplexity.masking.Interventions` (``kept_fraction``, ``layer_stats``, ``stats``)."""

    def __init__(self, mode: str, n_layers: int):
        self.mode, self.n_layers = mode, n_layers
        self._kept = [0.0] * n_layers
        self._total = [0] * n_layers
        self._stack = contextlib.ExitStack()

    def remove(self) -> None:
        self._stack.close()

    def __enter__(self) -> "GroupedInterventions":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def layer_stats(self) -> dict:
        kept = [float(k) / t if t else float("nan") for k, t in zip(self._kept, self._total)]
        return {"kept": {"down_in": kept}, "input_kept": None}

    def kept_fraction(self) -> dict[str, float]:
        total = sum(self._total)
        return {"down_in": float(sum(float(k) for k in self._kept)) / total if total else float("nan")}

    def stats(self) -> dict:
        return {"down_in": {"kept_fraction": self.kept_fraction()["down_in"], "calls": None, "elements": sum(self._total)}}

    def batch_view(self) -> dict:
        return {}

    def id_counts(self) -> dict:
        return {}


def install_grouped(model: nn.Module, mode: str, *, thresholds: Mapping[str, Sequence[float]],
                    centroids: Mapping[str, torch.Tensor | np.ndarray], predictors=None, skip_first_position: bool,
                    backend: str = "auto") -> GroupedInterventions:
    """Run every MLP of ``model`` through the grouped kernel with ``mode``'s cluster ids.

    ``thresholds: {"down_in": [T per layer]}`` (the oracle's patterns), ``centroids: {"down_in":
    (L, K, d_ff) bool}`` (L = 1 pooled or n_layers), ``predictors: {"down_in": [per layer]}``
    (``predicted``).  Returns a handle; ``remove()`` restores the MLPs.
    """
    from apc.deploy.forward import grouped_mlp_forward
    from apc.perplexity.masking import nearest_centroid

    layers = decoder_layers(model)
    n_layers = len(layers)
    c = torch.as_tensor(centroids["down_in"])
    if c.dim() != 3 or c.shape[0] not in (1, n_layers):
        raise ValueError(f"centroids['down_in'] must be (1 or {n_layers}, K, d_ff), got {tuple(c.shape)}")
    thr = [float(t) for t in thresholds["down_in"]]
    if len(thr) != n_layers:
        raise ValueError(f"thresholds['down_in'] has {len(thr)} values, expected {n_layers}")
    preds = list((predictors or {}).get("down_in") or [])
    if mode == "predicted" and len(preds) != n_layers:
        raise ValueError(f"mode 'predicted' needs one predictor per layer ({n_layers})")
    handle = GroupedInterventions(mode, n_layers)
    sets: dict = {}

    def centroid_set(l: int, device) -> torch.Tensor:
        src = l if c.shape[0] == n_layers else 0
        if (src, device) not in sets:
            sets[(src, device)] = c[src].to(device=device, dtype=torch.float32)
        return sets[(src, device)]

    def choose(l: int, x: torch.Tensor):
        mlp = layers[l].mlp
        cents = centroid_set(l, x.device)
        if mode == "centroid_only":
            with torch.no_grad():
                h = mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)
            ids = nearest_centroid((h.abs().float() >= thr[l]).float(), cents)
        else:
            pred = preds[l]
            if isinstance(pred, nn.Module):
                pred.to(x.device).eval()
            with torch.no_grad():
                ids = pred(x.float()).argmax(dim=1)
        kept = cents.sum(dim=1).index_select(0, ids)
        if skip_first_position and x.shape[0] > 0:
            seq = handle._seq_len
            kept = kept.view(-1, seq)[:, 1:]
        handle._kept[l] = handle._kept[l] + float(kept.sum())
        handle._total[l] += kept.numel() * cents.shape[1]
        return ids, cents > 0.5

    def record_seq_len(module, args):
        handle._seq_len = int(args[0].shape[1])

    handle._seq_len = 1
    handle._stack.enter_context(grouped_mlp_forward(model, choose, backend=backend,
                                                    keep_first_position=skip_first_position))
    hook = model.register_forward_pre_hook(record_seq_len)
    handle._stack.callback(hook.remove)
    return handle
