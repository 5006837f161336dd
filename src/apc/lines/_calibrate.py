"""Calibration helpers of the training-free lines (a private module of :mod:`apc.lines`): thresholds for a
kept share, TEAL's thresholds (WINA's with column scales), TEAL's block-wise split, and greedy allocations of a compute budget across
layers (``layer-greedy``: of TEAL's shares, and of the cluster lines' density).

Everything here reads a sample of each layer's stored FFN inputs ``h: (n, d_model)`` (the
post-norm hidden state entering ``gate_proj``/``up_proj``) and recomputes the layer's MLP
from its weights, so no model forward pass is needed.

* **Thresholds for a kept share s** (:func:`share_threshold`): the smallest T such that
  ``|v| >= T`` keeps at most ``round(s · n)`` of the n sampled values (T = 0 at s = 1: every
  value kept, the dense FFN).
* **CATS**: T on ``|act(W_gate·h)|`` per layer.
* **TEAL**: T_in on ``|h|`` and then T_mid on ``|down_in|`` computed from the thresholded input
  (the order the FFN runs in), per layer, one kept share σ for both (or one each).
* **WINA** (:func:`wina_scales`): the same two thresholds on ``|h_j| · ‖W[:, j]‖₂``, the norm of
  the weight column that reads channel j (gate and up stacked for ``h``; down for ``down_in``).
* **TEAL's block-wise split** (:func:`block_allocation`): in one layer, from both shares at 1,
  repeatedly lower the input share σ_in (gate and up: weight 2) or the ``down_in`` share σ_mid
  (down: weight 1) by one grid step, whichever adds the least MLP-output error per multiply-add
  saved, until the layer's compute ``(2 σ_in + σ_mid) / 3`` reaches the budget; ``down_in``'s kept
  neurons are then set so that the layer spends the budget within one neuron.
* **LaRoSA** (:func:`pca_rotations`): Q per layer, the eigenvectors of ``hᵀh`` over the sample,
  by decreasing eigenvalue.
* **Greedy allocation** (:func:`greedy_allocation`): per-layer squared error of the MLP output
  on a grid of kept shares, then, from every layer dense, repeatedly lower the share of the layer
  whose next grid step adds the least error per neuron saved, until the mean share reaches the
  budget; the last step is topped up so that the kept neurons sum to the budget exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["LayerMLP", "block_allocation", "sample_train_inputs", "error_curves", "greedy_allocation", "layer_mlps",
           "share_grid", "share_threshold", "teal_thresholds"]


class LayerMLP:
    """One gated MLP as three callables: ``gate(h)``, ``up(h)`` -> ``(n, d_ff)``, ``down(a)`` -> ``(n, d_model)``,
    and its activation ``act``."""

    def __init__(self, gate: nn.Module, up: nn.Module, down: nn.Module, act: Callable):
        self.gate, self.up, self.down, self.act = gate, up, down, act

    @torch.no_grad()
    def intermediate(self, h: torch.Tensor) -> torch.Tensor:
        """``down_in = act(gate(h)) * up(h)``: ``(n, d_ff)``."""
        return self.act(self.gate(h)) * self.up(h)


def layer_mlps(model: nn.Module) -> list[LayerMLP]:
    """The gated MLP of every decoder layer; ``ValueError`` when a layer has no activation."""
    from apc.common.projections import decoder_layers, mlp_projections

    out = []
    for i, (layer, mods) in enumerate(zip(decoder_layers(model), mlp_projections(model))):
        act = getattr(getattr(layer, "mlp", None), "act_fn", None)
        if act is None:
            raise ValueError(f"layer {i}: the MLP has no activation function (mlp.act_fn): not a gated MLP")
        out.append(LayerMLP(mods["gate"], mods["up"], mods["down"], act))
    return out


def sample_train_inputs(ffn_dir, n_layers: int, n: int, seed: int, *, device, dtype) -> list[torch.Tensor]:
    """Per layer, ``min(n, stored)`` train FFN inputs ``(n, d_model)`` of the store under ``ffn_dir``, rows
    drawn without replacement by a generator seeded with ``seed * 1_000_003 + layer`` (sorted)."""
    from apc.extraction.ffn_inputs import FfnInputReader, ffn_input_path

    out = []
    for l in range(n_layers):
        reader = FfnInputReader(ffn_input_path(ffn_dir, "train", l))
        k = min(int(n), len(reader))
        rows = np.sort(np.random.default_rng(int(seed) * 1_000_003 + l).choice(len(reader), k, replace=False))
        out.append(torch.from_numpy(reader.rows(rows)).to(device=device, dtype=dtype))
    return out


def share_threshold(values: torch.Tensor, share: float) -> float:
    """Smallest T with ``(|values| >= T).sum() <= round(share * values.numel())`` (0.0 at share 1)."""
    if not 0.0 < share <= 1.0:
        raise ValueError(f"kept share must be in (0, 1], got {share}")
    v = values.detach().abs().reshape(-1).float()
    n = v.numel()
    keep = int(round(share * n))
    if keep >= n:
        return 0.0
    kth = torch.kthvalue(v, n - keep).values  # the (keep + 1)-th largest value
    return float(torch.nextafter(kth, torch.tensor(float("inf"), device=kth.device)))


def share_grid(step: float) -> np.ndarray:
    """Kept shares ``1, 1 - step, 1 - 2 step, ...`` down to ``step`` (descending)."""
    if not 0.0 < step < 1.0:
        raise ValueError(f"allocation grid step must be in (0, 1), got {step}")
    n = int(round(1.0 / step))
    return np.array([1.0 - i * step for i in range(n)], dtype=np.float64)


@torch.no_grad()
def teal_thresholds(mlps: Sequence[LayerMLP], samples: Sequence[torch.Tensor], shares: Sequence[float],
                    mid_shares: Sequence[float] | None = None, scales: tuple | None = None) -> dict:
    """TEAL at one kept share per layer: ``{"input": [T_in], "mid": [T_mid], "input_kept": [...],
    "mid_kept": [...]}`` (the kept shares achieved on the sample).  ``mid_shares``: ``down_in``'s own
    share per layer (default ``shares``); ``scales``: ``(input_scale, mid_scale)`` lists of per-layer
    column norms (:func:`wina_scales`): the thresholds are then on ``|v| * scale`` (WINA)."""
    mid_shares = shares if mid_shares is None else mid_shares
    if len(shares) != len(mlps) or len(mid_shares) != len(mlps):
        raise ValueError(f"one kept share per layer expected ({len(mlps)}), got {len(shares)} and {len(mid_shares)}")
    out = {"input": [], "mid": [], "input_kept": [], "mid_kept": []}
    for l, (mlp, h, s, sm) in enumerate(zip(mlps, samples, shares, mid_shares)):
        score_in = h if scales is None else h.abs().float() * scales[0][l].to(h.device)
        t_in = share_threshold(score_in, float(s))
        keep_in = score_in.abs() >= t_in
        mid = mlp.intermediate(h.masked_fill(~keep_in, 0))
        score_mid = mid if scales is None else mid.abs().float() * scales[1][l].to(h.device)
        t_mid = share_threshold(score_mid, float(sm))
        out["input"].append(t_in)
        out["mid"].append(t_mid)
        out["input_kept"].append(float(keep_in.float().mean()))
        out["mid_kept"].append(float((score_mid.abs() >= t_mid).float().mean()))
    return out


@torch.no_grad()
def block_allocation(mlp: LayerMLP, h: torch.Tensor, compute_share: float, grid: Sequence[float],
                     cache: dict | None = None) -> dict:
    """TEAL's split of one layer's budget between its input and ``down_in`` (module docstring).

    ``h: (n, d_model)``, ``grid`` descending from 1.0 (:func:`share_grid`).  ``cache``: a dict kept
    between calls on the same layer, sample and grid (other budgets walk the same greedy path).  Returns ``{"kept_input",
    "kept_mid"}`` (channels and neurons kept), ``input_share``, ``mid_share``, ``compute_share``
    (``(2 kept_input / d_model + kept_mid / d_ff) / 3``, within one neuron of the budget) and ``steps``
    (the greedy path, ``[input_share, mid_share]`` per step)."""
    if not 0.0 < compute_share <= 1.0:
        raise ValueError(f"compute share must be in (0, 1], got {compute_share}")
    grid = np.asarray(grid, dtype=np.float64)
    d_model, d_ff = h.shape[1], mlp.gate.out_features
    n_in = [int(round(g * d_model)) for g in grid]
    n_mid = [int(round(g * d_ff)) for g in grid]
    target = compute_share * 3 * d_model * d_ff  # multiply-adds per token: 2 d_ff per input channel, d_model per neuron
    cache = {} if cache is None else cache
    if "y" not in cache:
        cache.update(y=mlp.down(mlp.intermediate(h)), mids={}, errors={})
    y, mids, errors = cache["y"], cache["mids"], cache["errors"]

    def cost(i: int, j: int) -> float:
        return 2.0 * d_ff * n_in[i] + d_model * n_mid[j]

    def error(i: int, j: int) -> float:
        if (i, j) not in errors:
            if i not in mids:
                mids[i] = mlp.intermediate(h.masked_fill(h.abs() < share_threshold(h, float(grid[i])), 0))
            m = mids[i]
            m = m.masked_fill(m.abs() < share_threshold(m, float(grid[j])), 0)
            errors[(i, j)] = float(((mlp.down(m) - y).double() ** 2).sum())
        return errors[(i, j)]

    i = j = 0
    steps = [[1.0, 1.0]]
    while cost(i, j) > target:
        options = [((error(a, b) - error(i, j)) / (cost(i, j) - cost(a, b)), a, b)
                   for a, b in ((i + 1, j), (i, j + 1)) if a < len(grid) and b < len(grid)]
        if not options:
            raise ValueError(f"compute share {compute_share} is below the allocation grid's smallest shares")
        _, i, j = min(options)
        steps.append([float(grid[i]), float(grid[j])])
    k_in = n_in[i]
    k_mid = int(round((target - 2.0 * d_ff * k_in) / d_model))
    if k_mid > d_ff:  # the last step lowered the input past the budget: give the rest back to the input
        k_in = int(np.ceil((target - d_model * d_ff) / (2.0 * d_ff)))
        k_mid = int(round((target - 2.0 * d_ff * k_in) / d_model))
    k_mid = min(max(k_mid, 0), d_ff)
    spent = (2.0 * d_ff * k_in + d_model * k_mid) / (3.0 * d_model * d_ff)
    return {"kept_input": k_in, "kept_mid": k_mid, "input_share": k_in / d_model, "mid_share": k_mid / d_ff,
            "compute_share": spent, "steps": steps}


@torch.no_grad()
def error_curves(mlps: Sequence[LayerMLP], samples: Sequence[torch.Tensor], grid: Sequence[float],
                 kind: str) -> np.ndarray:
    """``(n_layers, len(grid))`` squared error of each layer's MLP output on its sample when the layer
    keeps share ``grid[j]``: ``kind="teal"`` thresholds the input and ``down_in`` (TEAL);
    ``kind="down_in"`` thresholds ``down_in`` alone (the error any mask of that share must at
    least make, used to allocate cluster densities)."""
    if kind not in ("teal", "down_in"):
        raise ValueError(f"unknown error kind {kind!r}; expected 'teal' or 'down_in'")
    out = np.zeros((len(mlps), len(grid)))
    for l, (mlp, h) in enumerate(zip(mlps, samples)):
        mid = mlp.intermediate(h)
        y = mlp.down(mid)
        for j, s in enumerate(grid):
            if kind == "teal":
                t = teal_thresholds([mlp], [h], [s])
                hin = h.masked_fill(h.abs() < t["input"][0], 0)
                m = mlp.intermediate(hin)
                m = m.masked_fill(m.abs() < t["mid"][0], 0)
            else:
                m = mid.masked_fill(mid.abs() < share_threshold(mid, float(s)), 0)
            out[l, j] = float(((mlp.down(m) - y).double() ** 2).sum())
    return out


def greedy_allocation(errors: np.ndarray, grid: Sequence[float], budget_share: float, width: int) -> np.ndarray:
    """Kept neurons per layer, ``(n_layers,)`` int, summing to exactly ``round(budget_share * width) * n_layers``.

    ``errors: (n_layers, len(grid))`` from :func:`error_curves`, ``grid`` descending from 1.0.
    Starting dense, each step lowers one layer to its next grid share, the layer with the least
    added error per neuron saved; once the total is at or below the budget, the last lowered
    layer gets back the neurons that overshot it (fewer than one grid step)."""
    errors = np.asarray(errors, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    n_layers = errors.shape[0]
    if errors.shape != (n_layers, len(grid)) or len(grid) < 1 or abs(grid[0] - 1.0) > 1e-12 or np.any(np.diff(grid) >= 0):
        raise ValueError("errors must be (n_layers, len(grid)) and the grid descend from 1.0")
    if not 0.0 < budget_share <= 1.0:
        raise ValueError(f"budget share must be in (0, 1], got {budget_share}")
    counts = np.array([int(round(g * width)) for g in grid])
    budget = int(round(budget_share * width)) * n_layers
    if counts[-1] * n_layers > budget:
        raise ValueError(f"budget share {budget_share} is below the allocation grid's smallest share {grid[-1]:.3f}")
    idx = np.zeros(n_layers, dtype=int)
    kept = np.full(n_layers, counts[0])
    last = 0
    while kept.sum() > budget:
        best, best_cost = -1, np.inf
        for l in range(n_layers):
            j = idx[l]
            if j + 1 >= len(grid):
                continue
            saved = counts[j] - counts[j + 1]
            cost = (errors[l, j + 1] - errors[l, j]) / max(saved, 1)
            if cost < best_cost:
                best, best_cost = l, cost
        idx[best] += 1
        kept[best] = counts[idx[best]]
        last = best
    kept[last] += budget - kept.sum()
    return kept.astype(np.int64)
