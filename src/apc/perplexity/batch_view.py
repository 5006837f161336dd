"""The batch view of FFN masks: the weight rows B consecutive tokens read together
(:meth:`apc.perplexity.masking.Interventions.batch_view`), for masks per token and for masks per sequence."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["add_batch_view", "sequence_view"]


def add_batch_view(acc: dict, keep: torch.Tensor, ids: torch.Tensor | None, density: torch.Tensor | None) -> None:
    """Add the batch view of ``keep: (..., seq, W) bool`` to ``acc[B] = [union kept, grouped read,
    groups * W, groups]``: consecutive B positions of each sequence form a group (a trailing partial
    group is left out).  ``ids: (..., seq, m)`` assigned centroid ids with ``density: (K,)``."""
    w = keep.shape[-1]
    keep = keep.reshape(-1, keep.shape[-2], w)
    if ids is not None:
        ids = ids.reshape(-1, ids.shape[-2], ids.shape[-1])
    seq = keep.shape[1]
    for b, cell in acc.items():
        n = seq // b
        if n == 0:
            continue
        groups = keep[:, : n * b].reshape(keep.shape[0], n, b, w).any(dim=2)
        cell[0] = cell[0] + groups.sum()
        cell[2] += groups.shape[0] * n * w
        if ids is not None and density is not None:
            g = ids[:, : n * b].reshape(ids.shape[0] * n, -1).sort(dim=1).values
            first = torch.ones_like(g, dtype=torch.bool)
            first[:, 1:] = g[:, 1:] != g[:, :-1]
            read = (density[g] * first).sum(dim=1).clamp(max=1.0)
            cell[1] = cell[1] + read.sum()
            cell[3] += g.shape[0]


def sequence_view(seq_masks: list, batch_sizes, width: int) -> dict:
    """The batch view of one projection whose every sequence has one mask: ``seq_masks[l]``, the ``(n, W)``
    masks of layer l's sequences (chunks in order); per B, ``union`` over B consecutive sequences."""
    out = {}
    for b in batch_sizes:
        union, n = [], 0
        for masks in seq_masks:
            m = torch.cat(masks) if masks else torch.zeros(0, width, dtype=torch.bool)
            n = m.shape[0] // b
            union.append(float(m[: n * b].view(n, b, -1).any(dim=1).float().mean()) if n else float("nan"))
        mean = float(np.mean(union)) if union and n else float("nan")
        out[str(b)] = {"union": {"mean": mean, "layers": union}, "grouped": None, "groups": n}
    return out
