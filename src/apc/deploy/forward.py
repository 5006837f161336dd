"""Run a model's gated MLPs through the cluster-grouped kernel (masked perplexity without hooks).

``choose(layer_index, x_flat)`` receives the MLP input of one decoder layer, ``x_flat (N, d_model)``
(N = batch * sequence positions, row-major), and returns ``(ids, masks)``: ``ids (N,) int64`` the
group of each position and ``masks`` either ``(K, d_ff) bool`` or a prebuilt
:class:`apc.deploy.ffn.GroupIndex`.  Position ``n`` then computes only the neurons of
``masks[ids[n]]``: ``y = down_proj(act(gate_proj(x)) * up_proj(x) * masks[ids])``.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from apc.common.projections import decoder_layers
from apc.deploy.ffn import GroupIndex, use_triton, column_major, group_index, grouped_ffn

Choose = Callable[[int, torch.Tensor], tuple]


@contextlib.contextmanager
def grouped_mlp_forward(model: torch.nn.Module, choose: Choose, *, backend: str = "auto",
                        keep_first_position: bool = False) -> Iterator[torch.nn.Module]:
    """Within the block, every decoder layer's ``mlp.forward`` runs :func:`grouped_ffn`.

    ``keep_first_position``: position 0 of every sequence (a BOS token) keeps all neurons.  The MLPs
    must be Llama-style (``gate_proj``, ``up_proj``, ``down_proj``, ``act_fn``) without biases.
    The original forwards are restored on exit.  Where the Triton kernels run, each layer keeps a
    column-major copy of ``down_proj.weight`` (:func:`apc.deploy.ffn.column_major`) while inside.
    """
    layers = decoder_layers(model)
    mlps = []
    for i, layer in enumerate(layers):
        mlp = getattr(layer, "mlp", None)
        missing = [n for n in ("gate_proj", "up_proj", "down_proj", "act_fn") if not hasattr(mlp, n)]
        if missing:
            raise ValueError(f"layer {i}: mlp has no {', '.join(missing)}; a Llama-style gated MLP is needed")
        if any(getattr(mlp, n).bias is not None for n in ("gate_proj", "up_proj", "down_proj")):
            raise ValueError(f"layer {i}: the grouped MLP forward supports projections without bias only")
        mlps.append(mlp)
    saved = [(m, m.__dict__.get("forward")) for m in mlps]
    try:
        for i, mlp in enumerate(mlps):
            mlp.forward = _make_forward(i, mlp, choose, backend, keep_first_position)
        yield model
    finally:
        for mlp, fwd in saved:
            if fwd is None:
                mlp.__dict__.pop("forward", None)
            else:
                mlp.forward = fwd


def _make_forward(layer: int, mlp, choose: Choose, backend: str, keep_first: bool):
    cache: dict = {}

    def down_weight(x: torch.Tensor) -> torch.Tensor:
        w = mlp.down_proj.weight
        if not use_triton(x, mlp.act_fn, backend, "grouped"):
            return w
        key = (w.data_ptr(), w._version)  # the column-major copy, made once per weight version
        if cache.get("key") != key:
            cache["key"], cache["w"] = key, column_major(w.detach())
        return cache["w"]

    def forward(x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        ids, masks = choose(layer, flat)
        gi = masks if isinstance(masks, GroupIndex) else None
        d_ff = mlp.gate_proj.out_features
        if gi is None:
            masks = torch.as_tensor(masks, device=flat.device)
            if masks.dim() != 2 or masks.shape[1] != d_ff:
                raise ValueError(f"layer {layer}: choose returned masks of shape {tuple(masks.shape)}, "
                                 f"expected (K, {d_ff})")
            masks = masks if masks.dtype == torch.bool else masks != 0
        ids = torch.as_tensor(ids, device=flat.device)
        if ids.shape != (flat.shape[0],):
            raise ValueError(f"layer {layer}: choose returned ids of shape {tuple(ids.shape)}, "
                             f"expected ({flat.shape[0]},)")
        ids = ids.long()
        if keep_first and len(shape) >= 2 and shape[-2] > 0:
            if gi is not None:
                raise ValueError("keep_first_position needs choose to return masks, not a GroupIndex")
            k = masks.shape[0]
            masks = torch.cat([masks, torch.ones(1, d_ff, dtype=torch.bool, device=masks.device)])
            ids = ids.view(-1, shape[-2]).clone()
            ids[:, 0] = k
            ids = ids.view(-1)
        groups = gi if gi is not None else group_index(masks)
        y = grouped_ffn(flat, mlp.gate_proj.weight, mlp.up_proj.weight, down_weight(flat), ids, groups,
                        act=mlp.act_fn, backend=backend)
        return y.view(*shape[:-1], y.shape[-1])

    return forward
