"""One input mask of a masked forward, shared by the projections that read the same tensor (:func:`counted_mask`).

Gate and up read the MLP input, q, k and v the attention input: the mask is computed once per tensor, position 0
of every call left dense with ``skip_first`` (a BOS token), and its kept elements counted once.  Only torch.
"""

from __future__ import annotations

from typing import Callable

import torch


def counted_mask(keep_in: Callable, skip_first: bool, record: Callable) -> Callable:
    """``(h, count) -> h masked``: ``keep_in(h)`` gives ``(h masked, keep)``; with ``skip_first`` position 0 (dim -2)
    keeps ``h``; the next call on the same tensor reuses the result; ``count``: ``record(keep)`` with the counted
    positions' ``keep`` (bool, position 0 left out with ``skip_first``)."""
    last: list = [None, None]

    def mask(h: torch.Tensor, count: bool) -> torch.Tensor:
        if last[0] is h:
            return last[1]
        out, keep = keep_in(h)
        if skip_first and h.dim() >= 2:
            out = out.clone()
            out[..., 0, :] = h[..., 0, :]
            keep = keep[..., 1:, :]
        if count:
            record(keep)
        last[0], last[1] = h, out
        return out

    return mask
