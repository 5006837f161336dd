"""Fit predictors on train FFN inputs: cross-entropy on oracle cluster ids, BCE on binary patterns.

Minibatch Adam over a few epochs; the data sits on the device as float32.
Deterministic for a seed: initial weights and batch order come from seeded
generators (on CUDA, up to the usual floating-point reduction order).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..clustering.data import PackedPatterns
from ..common.device import resolve_device
from ..extraction.patterns import pack_torch, unpack_torch
from .models import ClusterPredictor, NeuronPredictor

#: Training defaults (override per call): epochs, batch size, Adam learning rate and weight decay.
FIT_DEFAULTS = {"epochs": 8, "batch_size": 512, "lr": 3e-3, "weight_decay": 1e-4}


def _as_float(x, name: str, device: torch.device) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (n_tokens, width), got shape {tuple(x.shape)}")
    return x.to(device=device, dtype=torch.float32)


def _train(model: nn.Module, x: torch.Tensor, target: torch.Tensor, loss_fn, *, seed: int, epochs: int,
           batch_size: int, lr: float, weight_decay: float) -> list[float]:
    """Adam over shuffled minibatches; returns the mean training loss per epoch.

    ``loss_fn(scores, target[batch])``: the target rows of a batch are passed as stored.
    """
    model.norm.fit(x)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(int(seed) + 1)
    n, history = x.shape[0], []
    model.train()
    for _ in range(int(epochs)):
        order = torch.randperm(n, generator=gen).to(x.device)
        total = 0.0
        for s in range(0, n, int(batch_size)):
            idx = order[s : s + int(batch_size)]
            loss = loss_fn(model(x[idx]), target[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        history.append(total / n)
    return history


def _init(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return build()


def _checked_options(options: dict) -> dict:
    unknown = sorted(set(options) - set(FIT_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown fit options {unknown}; expected some of {', '.join(FIT_DEFAULTS)}")
    return {**FIT_DEFAULTS, **options}


def fit_cluster_predictor(
    x, labels, k: int, *, kind: str = "linear", hidden: int = 256, seed: int = 0, device: str = "auto", **options
) -> tuple[ClusterPredictor, list[float]]:
    """Fit ``kind`` on ``x: (n, d_model)`` inputs -> ``labels: (n,)`` ids in ``[0, k)``.

    Returns ``(predictor on the CPU in eval mode, loss per epoch)``; ``options``
    override :data:`FIT_DEFAULTS`.
    """
    dev = resolve_device(device)
    opts = _checked_options(options)
    x = _as_float(x, "inputs", dev)
    y = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels).long().to(dev)
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels must be (n_tokens,) = ({x.shape[0]},) like the inputs, got {tuple(y.shape)}")
    if y.numel() and not (0 <= int(y.min()) and int(y.max()) < k):
        raise ValueError(f"labels must lie in [0, {k}), got range [{int(y.min())}, {int(y.max())}]")
    model = _init(seed, lambda: ClusterPredictor(x.shape[1], k, kind, hidden)).to(dev)
    history = _train(model, x, y, F.cross_entropy, seed=seed, **opts)
    return model.cpu().eval(), history


def fit_neuron_predictor(
    x, patterns, rank: int, *, seed: int = 0, device: str = "auto", **options
) -> tuple[NeuronPredictor, list[float]]:
    """Fit a rank-``rank`` :class:`NeuronPredictor` on ``x: (n, d_model)`` -> ``patterns: (n, d_ff)`` (BCE).

    ``patterns``: a bool array or a :class:`PackedPatterns` (kept packed, unpacked per batch).

    Returns ``(predictor on the CPU in eval mode, loss per epoch)``.
    """
    dev = resolve_device(device)
    opts = _checked_options(options)
    x = _as_float(x, "inputs", dev)
    if isinstance(patterns, PackedPatterns):  # stays packed on the device; unpacked per batch
        width, y = patterns.width, patterns.packed_rows(np.arange(patterns.n), dev)
    else:
        y = torch.as_tensor(np.asarray(patterns) if not isinstance(patterns, torch.Tensor) else patterns)
        if y.dim() != 2:
            raise ValueError(f"patterns must be 2-D (n_tokens, width), got shape {tuple(y.shape)}")
        width, y = y.shape[1], pack_torch(y.to(dev).bool())
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"inputs have {x.shape[0]} tokens but patterns have {y.shape[0]}")

    def loss(scores, packed):
        return F.binary_cross_entropy_with_logits(scores, unpack_torch(packed, width, torch.float32))

    model = _init(seed, lambda: NeuronPredictor(x.shape[1], width, rank)).to(dev)
    history = _train(model, x, y, loss, seed=seed, **opts)
    return model.cpu().eval(), history
