"""Mixture-of-experts extraction: the router's choice, row-aligned, and stores of routed rows.

Each (layer, expert) is an FFN site of its own (:mod:`apc.common.expert_sites`),
site ``layer * n_experts + expert``; its pattern file ``L{site:02d}.npy`` holds one
row per token routed to that expert, in token order.  Beside them, one routing
file per decoder layer says where every token went:

* ``{split}/routing/L{layer:02d}.npy`` -- ``int16`` ``(n_tokens, top_k)``: the experts
  of token ``t`` (row ``t`` = row ``t`` of a dense pattern store: window order, BOS
  positions excluded), in the router's order.  Row ``i`` of expert ``e``'s pattern
  file is the ``i``-th token ``t`` with ``e`` in row ``t`` here.
* ``.json`` sidecar: model, split, layer, width (top_k), n_tokens, n_experts.

The rows an expert gets are known only after the pass, so its writers are sized
for every token and cut to the rows written
(:meth:`apc.common.rowstore.RowStoreWriter.close_written`).  Only torch and numpy are used.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from apc.common.rowstore import RowStoreReader, RowStoreWriter


def routing_path(root: str | os.PathLike, split: str, layer: int) -> Path:
    """Path of the routing array of one (split, decoder layer) under ``root``."""
    return Path(root) / split / "routing" / f"L{layer:02d}.npy"


class RoutingWriter(RowStoreWriter):
    """Write one layer's routing ``(n_tokens, top_k)`` in token chunks; ``counts`` tallies tokens per expert."""

    def __init__(self, path: str | os.PathLike, n_tokens: int, top_k: int, n_experts: int, meta: dict):
        super().__init__(path, n_tokens, top_k, {**meta, "n_experts": int(n_experts)}, dtype=np.int16)
        self.counts = np.zeros(int(n_experts), dtype=np.int64)

    def append(self, idx: torch.Tensor) -> None:
        """Append ``idx: (m, top_k)`` expert ids."""
        self._check(idx.shape[-1], idx.shape[0])
        rows = idx.detach().cpu().numpy().astype(np.int16)
        self.counts += np.bincount(rows.reshape(-1), minlength=len(self.counts))
        self._write(rows)

    def _extra_meta(self) -> dict:
        return {"tokens_per_expert": self.counts.tolist()}


class RoutingReader(RowStoreReader):
    """Read one layer's routing file (memory-mapped) and its sidecar."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path, dtype=np.int16)

    def rows_of(self, expert: int) -> np.ndarray:
        """Token rows ``(n_routed,)`` int64 routed to ``expert``, ascending (row ``i`` = row ``i`` of its store)."""
        return np.flatnonzero((np.asarray(self._arr) == expert).any(axis=1))


def moe_summary(routing: dict[int, dict], density: dict[str, list[float]], n_experts: int, top_k: int) -> dict:
    """The MoE's own sparsity beside the neuron sparsity inside its experts.

    ``routing``: per decoder layer, the routing sidecar; ``density``: per projection, the pattern
    density of every site (``layer * n_experts + expert``).  Returns ``n_experts``, ``top_k``,
    ``expert_active_share`` (per layer: share of (token, expert) pairs computed, top_k / n_experts
    under top-k routing), ``expert_load`` (per layer and expert: share of tokens routed to it) and
    ``neuron_density`` (per projection, layer and expert: share of active neurons over its tokens).
    """
    layers = sorted(routing)
    active, load = [], []
    for l in layers:
        counts = np.asarray(routing[l]["tokens_per_expert"], dtype=np.float64)
        n = max(1, int(routing[l]["n_tokens"]))
        active.append(float(counts.sum() / (n * n_experts)))
        load.append((counts / n).tolist())
    return {"n_experts": n_experts, "top_k": top_k, "expert_active_share": active, "expert_load": load,
            "neuron_density": {p: [d[l * n_experts:(l + 1) * n_experts] for l in layers] for p, d in density.items()}}
