"""Predictors that run on the FFN input ``x: (n, d_model)`` before the FFN does.

* :class:`ClusterPredictor` -- scores ``(n, K)`` over a cell's centroids: ``linear``
  (softmax regression) or ``mlp`` (one ReLU hidden layer of width ``hidden``).
* :class:`NeuronPredictor` -- Deja Vu style low-rank scores ``(n, d_ff)``:
  ``d_model -> rank -> d_ff``, sigmoid of the score = probability a neuron is active.

Both standardise the input with the train mean and standard deviation (buffers
set by :meth:`Standardize.fit`).  FLOPs count the matrix products, 2 per
multiply-add (the standardisation folds into the first layer's weights).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

#: Kinds of cluster-id predictors; ``neuron`` is the neuron-level baseline.
CLUSTER_KINDS = ("linear", "mlp")
KINDS = CLUSTER_KINDS + ("neuron",)


def ffn_flops(d_model: int, d_ff: int) -> int:
    """FLOPs per token of a SwiGLU FFN: gate, up and down products, ``3 * 2 * d_model * d_ff``."""
    return 6 * int(d_model) * int(d_ff)


class Standardize(nn.Module):
    """``(x - mean) / std`` per feature, with statistics from the training inputs."""

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(width))
        self.register_buffer("inv_std", torch.ones(width))

    def fit(self, x: torch.Tensor) -> None:
        """Set the statistics from ``x: (n, width)``; constant features get std 1."""
        std = x.std(dim=0)
        self.mean.copy_(x.mean(dim=0))
        self.inv_std.copy_(1.0 / torch.where(std > 1e-6, std, torch.ones_like(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.to(self.mean.dtype) - self.mean) * self.inv_std


def _linear_flops(*layers: nn.Linear) -> int:
    return sum(2 * l.in_features * l.out_features for l in layers)


class ClusterPredictor(nn.Module):
    """``x: (n, d_model)`` -> centroid scores ``(n, k)`` (logits of a softmax over the centroids)."""

    def __init__(self, d_model: int, k: int, kind: str = "linear", hidden: int = 256):
        super().__init__()
        if kind not in CLUSTER_KINDS:
            raise ValueError(f"unknown predictor kind {kind!r}; expected one of {', '.join(CLUSTER_KINDS)}")
        if int(k) < 1 or int(d_model) < 1 or (kind == "mlp" and int(hidden) < 1):
            raise ValueError(f"predictor sizes must be >= 1, got d_model={d_model}, k={k}, hidden={hidden}")
        self.kind, self.d_model, self.k, self.hidden = kind, int(d_model), int(k), int(hidden)
        self.norm = Standardize(self.d_model)
        if kind == "linear":
            self.net = nn.Sequential(nn.Linear(self.d_model, self.k))
        else:
            self.net = nn.Sequential(nn.Linear(self.d_model, self.hidden), nn.ReLU(), nn.Linear(self.hidden, self.k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.norm(x))

    def top(self, x: torch.Tensor, m: int = 1) -> torch.Tensor:
        """The ``m`` most likely centroids per token, ``(n, m)`` int64, best first (m=1: argmax, ties -> lowest)."""
        scores = self(x)
        if m == 1:
            return scores.argmax(dim=1, keepdim=True)
        return scores.topk(m, dim=1).indices

    def config(self) -> dict:
        return {"kind": self.kind, "d_model": self.d_model, "k": self.k,
                **({"hidden": self.hidden} if self.kind == "mlp" else {})}

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        return _linear_flops(*(l for l in self.net if isinstance(l, nn.Linear)))


class NeuronPredictor(nn.Module):
    """``x: (n, d_model)`` -> neuron scores ``(n, d_ff)`` through a rank-``rank`` bottleneck (logits)."""

    def __init__(self, d_model: int, d_ff: int, rank: int):
        super().__init__()
        if min(int(d_model), int(d_ff), int(rank)) < 1:
            raise ValueError(f"predictor sizes must be >= 1, got d_model={d_model}, d_ff={d_ff}, rank={rank}")
        self.kind, self.d_model, self.d_ff, self.rank = "neuron", int(d_model), int(d_ff), int(rank)
        self.norm = Standardize(self.d_model)
        self.down = nn.Linear(self.d_model, self.rank, bias=False)
        self.up = nn.Linear(self.rank, self.d_ff)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(self.norm(x)))

    def config(self) -> dict:
        return {"kind": "neuron", "d_model": self.d_model, "d_ff": self.d_ff, "rank": self.rank}

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        return _linear_flops(self.down, self.up)


def build_predictor(config: dict) -> nn.Module:
    """A fresh predictor from its :meth:`config` dict (``kind`` picks the class)."""
    kind = config.get("kind")
    try:
        if kind in CLUSTER_KINDS:
            return ClusterPredictor(config["d_model"], config["k"], kind, config.get("hidden", 256))
        if kind == "neuron":
            return NeuronPredictor(config["d_model"], config["d_ff"], config["rank"])
    except KeyError as err:
        raise ValueError(f"predictor config {config} lacks key {err}") from None
    raise ValueError(f"unknown predictor kind {kind!r}; expected one of {', '.join(KINDS)}")


def matched_rank(flops: int, d_model: int, d_ff: int) -> int:
    """Rank r of a :class:`NeuronPredictor` whose FLOPs ``2 r (d_model + d_ff)`` are closest to ``flops`` (>= 1)."""
    return max(1, int(math.floor(flops / (2 * (int(d_model) + int(d_ff))) + 0.5)))


def neuron_ranks(flops: int, d_model: int, d_ff: int, larger: int = 4) -> list[int]:
    """``[r, larger * r]``: the rank whose FLOPs match ``flops`` (a cluster predictor's), and a larger one."""
    if int(larger) <= 1:
        raise ValueError(f"larger must be an integer > 1, got {larger}")
    r = matched_rank(flops, d_model, d_ff)
    return [r, int(larger) * r]


@torch.no_grad()
def fold_standardization(predictor: nn.Module) -> nn.Module:
    """An equivalent copy for deployment: the input standardisation folded into the first product.

    ``W (x - mean) * inv_std + b = (W * inv_std) x + (b - (W * inv_std) mean)``; for the
    neuron predictor the constant moves through the bias-free bottleneck into ``up``'s bias.
    Saves two element-wise passes over the input per call.
    """
    folded = copy.deepcopy(predictor)
    mean, inv_std = folded.norm.mean, folded.norm.inv_std
    first = folded.net[0] if isinstance(folded, ClusterPredictor) else folded.down
    first.weight.mul_(inv_std[None, :])
    shift = first.weight @ mean
    if isinstance(folded, ClusterPredictor):
        first.bias.sub_(shift)
    else:
        folded.up.bias.sub_(folded.up.weight @ shift)
    folded.norm = nn.Identity()
    return folded
