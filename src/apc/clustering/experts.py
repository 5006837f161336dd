"""Neuron experts: cluster the FFN's *neurons* (not its tokens) into a shared set and routed experts.

This follows CMoE (arXiv 2502.04416; code: JarvisPei/CMoE, ``CMoE_utils.construct_experts_k_means``):

- **Shared set**: the share ``s`` of neurons with the highest activation frequency over the train
  tokens (CMoE: the ``n_shared * d_ff / E_total`` neurons of highest top-k activation rate).
- **Routed experts**: the other neurons in ``E`` equal-size clusters by balanced k-means on each
  neuron's binary activation vector over the train tokens (a column of the pattern store).
  Initial centroids are the ``E`` most frequent non-shared neurons, as in CMoE.  Centroids are the
  members' mean activation (a frequency per token), as in CMoE.
- **Distance: weighted Jaccard** ``1 - sum min(v, c) / sum max(v, c)``, which for a binary neuron
  vector ``v`` and a mean centroid ``c`` is ``1 - v.c / (|v| + |c| - v.c)`` (one matrix product).
  CMoE uses L1 to the mean centroid; the paper's activation-aware distance ``|v| - v.c`` is
  one-sided (tokens where the expert fires and the neuron does not cost nothing), so every neuron
  prefers the densest expert and the capacity limit alone decides.  Jaccard is symmetric and
  normalised by the neuron's own frequency, so a rare and a frequent neuron are compared on the
  same scale: it groups neurons that fire on the *same* tokens, which is what makes a token's
  active neurons fall into few experts.
- **Balanced assignment**: CMoE solves an exact linear assignment (``lap.lapjv``) over the distance
  matrix with each centroid repeated ``R/E`` times and runs one iteration.  Here a greedy
  capacity-limited assignment (pairs taken in increasing distance, each expert closed at ``R/E``
  members) replaces the exact solver (torch + numpy only, and it scales to ``d_ff = 14336``), and
  Lloyd iterations run until no neuron moves or ``max_iter``.

After the permutation :attr:`ExpertSet.permutation` (shared block first, then expert 0, 1, ...),
every expert is a contiguous block of ``gate``/``up`` rows and ``down`` columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..common.atomic import read_json, read_npy, write_json, write_npy
from ..common.device import exact_matmul, resolve_device

__all__ = ["ExpertSet", "expert_sizes", "fit_experts", "balanced_assign", "expert_counts", "best_experts",
           "coverage_parts", "coverage_sums", "expert_masks", "best_share", "save_experts", "load_experts", "permuted_weights"]


@dataclass
class ExpertSet:
    """One layer's neuron experts.

    ``shared: (n_shared,) int64`` neuron ids (ascending); ``members: (E, size) int64`` neuron ids of
    each routed expert (ascending within an expert); ``width``: neurons in the layer.
    """

    shared: np.ndarray
    members: np.ndarray
    width: int

    @property
    def n_experts(self) -> int:
        return int(self.members.shape[0])

    @property
    def size(self) -> int:
        """Neurons per routed expert."""
        return int(self.members.shape[1])

    @property
    def permutation(self) -> np.ndarray:
        """``(width,)`` int64: position ``j`` of the permuted FFN holds neuron ``permutation[j]``
        (shared block first, then each expert's block in expert order)."""
        return np.concatenate([self.shared, self.members.reshape(-1)]).astype(np.int64)

    def density(self, k: int) -> float:
        """Share of the layer's neurons kept by the shared set plus ``k`` experts."""
        return (len(self.shared) + int(k) * self.size) / self.width

    def assignment(self) -> np.ndarray:
        """``(width,)`` int64: expert id of each neuron, ``-1`` for the shared set."""
        out = np.full(self.width, -1, dtype=np.int64)
        for e, m in enumerate(self.members):
            out[m] = e
        return out


def expert_sizes(width: int, share: float, n_experts: int) -> tuple[int, int]:
    """``(n_shared, size)``: the shared set holds about ``share * width`` neurons, raised so that the rest
    splits into ``n_experts`` blocks of ``size`` neurons exactly."""
    if not 0.0 <= float(share) < 1.0:
        raise ValueError(f"shared share must lie in [0, 1), got {share}")
    if int(n_experts) < 1:
        raise ValueError(f"the number of experts must be >= 1, got {n_experts}")
    size = (int(width) - int(round(float(share) * width))) // int(n_experts)
    if size < 1:
        raise ValueError(f"{width} neurons leave no neuron per expert at shared share {share} and {n_experts} experts")
    return int(width) - int(n_experts) * size, size


def balanced_assign(dist: torch.Tensor, size: int) -> torch.Tensor:
    """Greedy capacity-limited assignment of ``dist: (R, E)`` rows to ``E`` columns, ``size`` rows each.

    Pairs are taken in increasing distance (ties: lower row, then lower column); a column closes at
    ``size`` rows.  Requires ``R == E * size``.  Returns ``(R,)`` int64 column ids.
    """
    n, e = dist.shape
    if n != e * size:
        raise ValueError(f"balanced assignment of {n} rows to {e} columns of {size} needs {e * size} rows")
    d = dist.detach().to("cpu", torch.float64).numpy()
    order = np.lexsort((np.tile(np.arange(e), n), np.repeat(np.arange(n), e), d.reshape(-1)))
    rows, cols = np.divmod(order, e)
    out = np.full(n, -1, dtype=np.int64)
    load = np.zeros(e, dtype=np.int64)
    left = n
    for r, c in zip(rows.tolist(), cols.tolist()):
        if out[r] < 0 and load[c] < size:
            out[r] = c
            load[c] += 1
            left -= 1
            if left == 0:
                break
    return torch.from_numpy(out)


def _jaccard_distance(v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``v: (T, R)`` 0/1 neuron columns, ``c: (T, E)`` mean centroids in [0, 1] -> ``(R, E)`` weighted
    Jaccard distances ``1 - v.c / (|v| + |c| - v.c)`` (0 for two empty vectors)."""
    inter = v.T @ c
    union = v.sum(0)[:, None] + c.sum(0)[None, :] - inter
    return 1.0 - torch.where(union > 0, inter / union.clamp(min=1e-12), torch.ones_like(inter))


def fit_experts(bits: torch.Tensor | np.ndarray, share: float, n_experts: int, *, max_iter: int = 10,
                device: str | torch.device = "auto") -> tuple[ExpertSet, dict]:
    """Shared set and ``n_experts`` balanced routed experts of one layer from ``bits: (T, width)`` bool
    train patterns (row = token, column = neuron).

    Returns ``(ExpertSet, info)`` with ``info = {iterations, moved (neurons reassigned per iteration),
    frequency (width,) float}``.  Deterministic: no random draw.
    """
    dev = resolve_device(device)
    x = torch.as_tensor(bits)
    if x.dim() != 2 or x.shape[0] < 1:
        raise ValueError(f"patterns must be (n_tokens >= 1, width), got shape {tuple(x.shape)}")
    width = int(x.shape[1])
    n_shared, size = expert_sizes(width, share, n_experts)
    x = x.to(dev).float()
    freq = x.mean(0)
    order = torch.argsort(-freq.cpu(), stable=True)  # most frequent first, ties -> lower id
    shared = order[:n_shared].sort().values
    rest = order[n_shared:].sort().values
    v = x[:, rest.to(dev)]  # (T, R) neuron columns
    rest_freq = freq[rest.to(dev)].cpu()
    init = torch.argsort(-rest_freq, stable=True)[: int(n_experts)]
    c = v[:, init.to(dev)].clone()
    assign, moved = None, []
    with exact_matmul(dev):
        for _ in range(max(1, int(max_iter))):
            new = balanced_assign(_jaccard_distance(v, c), size)
            moved.append(int(new.numel()) if assign is None else int((new != assign).sum()))
            if assign is not None and moved[-1] == 0:
                break
            assign = new
            onehot = torch.zeros(len(rest), int(n_experts), device=dev)
            onehot[torch.arange(len(rest), device=dev), assign.to(dev)] = 1.0
            c = (v @ onehot) / size
    members = np.stack([np.sort(rest.numpy()[assign.numpy() == e]) for e in range(int(n_experts))])
    info = {"iterations": len(moved), "moved": moved, "frequency": freq.cpu().numpy()}
    return ExpertSet(shared.numpy().astype(np.int64), members.astype(np.int64), width), info


def expert_masks(es: ExpertSet, with_shared: bool = True) -> torch.Tensor:
    """``(E, width)`` bool: row e keeps expert e's neurons (and the shared set with ``with_shared``)."""
    m = torch.zeros(es.n_experts, es.width, dtype=torch.bool)
    m[torch.arange(es.n_experts)[:, None], torch.from_numpy(es.members)] = True
    if with_shared:
        m[:, torch.from_numpy(es.shared)] = True
    return m


def _onehot(es: ExpertSet, device) -> torch.Tensor:
    return expert_masks(es, with_shared=False).T.to(device=device, dtype=torch.float32)


def expert_counts(bits: torch.Tensor, es: ExpertSet) -> torch.Tensor:
    """``bits: (T, width)`` bool -> ``(T, E)`` float32 active neurons of each token in each routed expert."""
    b = bits.float()
    return b @ _onehot(es, b.device)


def best_experts(score: torch.Tensor, k: int) -> torch.Tensor:
    """``score: (T, E)`` -> ``(T, k)`` int64 ids of the ``k`` highest-scored experts (best first)."""
    return score.topk(int(k), dim=1).indices


def coverage_parts(bits: torch.Tensor, es: ExpertSet, mass: torch.Tensor | None = None) -> dict:
    """What every choice of experts is scored from, computed once for ``bits: (T, width)`` bool (and
    ``mass: (T, width)`` ``|x|``): per token and expert the active neurons ``counts (T, E)`` and mass
    ``expert_mass (T, E)``, the shared set's ``shared (T,)`` and ``shared_mass (T,)``, and the totals."""
    onehot = _onehot(es, bits.device)
    b = bits.float()
    shared_idx = torch.from_numpy(es.shared).to(bits.device)
    out = {"counts": b @ onehot, "shared": b[:, shared_idx].sum(1), "active": float(b.sum()),
           "tokens": int(bits.shape[0])}
    if mass is not None:
        m = mass.float()
        out.update(expert_mass=m @ onehot, shared_mass=m[:, shared_idx].sum(1), mass=float(m.sum()))
    return out


def coverage_sums(bits: torch.Tensor | dict, es: ExpertSet, ids: torch.Tensor, mass: torch.Tensor | None = None) -> dict:
    """Sums over tokens of ``bits: (T, width)`` bool (or its :func:`coverage_parts`) for experts
    ``ids: (T, k)`` chosen per token.

    ``{active, covered, shared, tokens, kept}``: active neurons, those inside shared ∪ chosen
    experts, those inside the shared set alone, token count and kept neurons (distinct chosen
    experts only); with ``mass: (T, width)`` (``|x|``) also ``mass`` and ``mass_covered``.
    Coverage = covered / active; density = kept / (tokens * width).
    """
    parts = bits if isinstance(bits, dict) else coverage_parts(bits, es, mass)
    counts = parts["counts"]
    chosen = torch.zeros_like(counts, dtype=torch.bool).scatter_(1, ids.to(counts.device).long(), True)
    covered = parts["shared"].sum() + (counts * chosen).sum()
    out = {"active": parts["active"], "covered": float(covered), "shared": float(parts["shared"].sum()),
           "tokens": parts["tokens"], "kept": float(len(es.shared) * parts["tokens"] + chosen.sum() * es.size)}
    if "mass" in parts:
        out["mass"] = parts["mass"]
        out["mass_covered"] = float(parts["shared_mass"].sum() + (parts["expert_mass"] * chosen).sum())
    return out


def best_share(sums: dict, width: int) -> dict:
    """``{coverage, shared_coverage, density[, mass_coverage]}`` from :func:`coverage_sums`' sums."""
    act = max(sums["active"], 1.0)
    out = {"coverage": sums["covered"] / act, "shared_coverage": sums["shared"] / act,
           "density": sums["kept"] / max(sums["tokens"] * width, 1)}
    if "mass" in sums:
        out["mass_coverage"] = sums["mass_covered"] / max(sums["mass"], 1e-30)
    return out


FORMAT = "apc-experts-v1"


def save_experts(path, sets: list[ExpertSet], meta: dict | None = None, representatives=None) -> dict:
    """Write ``sets`` (one per layer) as ``path`` = ``(L, width)`` int64 permutations (``.npy``) and a ``.json``
    sidecar with ``n_shared``, ``size``, ``n_experts``, ``width``, ``representatives`` (``(L, E)``) and ``meta``."""
    if not sets:
        raise ValueError("save_experts needs at least one layer's experts")
    shapes = {(len(s.shared), s.n_experts, s.size, s.width) for s in sets}
    if len(shapes) != 1:
        raise ValueError(f"layers disagree on (n_shared, E, size, width): {sorted(shapes)}")
    n_shared, e, size, width = shapes.pop()
    path = Path(path).with_suffix(".npy")
    side = {**(meta or {}), "format": FORMAT, "n_shared": n_shared, "n_experts": e, "size": size, "width": width,
            "shared_share": n_shared / width,
            "representatives": None if representatives is None else [[int(r) for r in rs] for rs in representatives]}
    write_npy(path, np.stack([s.permutation for s in sets]))
    write_json(path.with_suffix(".json"), side)
    return side


def load_experts(path) -> tuple[list[ExpertSet], dict]:
    """``(sets, sidecar)`` written by :func:`save_experts`."""
    path = Path(path).with_suffix(".npy")
    side = read_json(path.with_suffix(".json"))
    if side.get("format") != FORMAT:
        raise ValueError(f"{path}: not an experts file (format {side.get('format')!r}, expected {FORMAT!r})")
    perm = read_npy(path)
    n, e, size = side["n_shared"], side["n_experts"], side["size"]
    if perm.shape[1] != n + e * size:
        raise ValueError(f"{path}: permutations of width {perm.shape[1]}, expected {n} + {e} x {size}")
    return [ExpertSet(p[:n].copy(), p[n:].reshape(e, size).copy(), int(perm.shape[1])) for p in perm], side


def permuted_weights(gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor, es: ExpertSet):
    """``(gate[perm], up[perm], down[:, perm])`` for ``gate, up: (d_ff, d_model)`` and ``down: (d_model, d_ff)``:
    the same FFN with the shared block first and every expert a contiguous block."""
    perm = torch.from_numpy(es.permutation).to(gate.device)
    return gate.index_select(0, perm), up.index_select(0, perm), down.index_select(1, perm)
