"""Test metrics of predictors: id accuracy against the oracle and coverage of the predicted mask.

Inputs ``x: (n, d_model)`` (any array sliceable by rows, e.g. a float16 memory map)
and the true patterns (:class:`PackedPatterns`, row t = token t) are streamed in
lockstep.  Mask metrics reuse :class:`apc.metrics.CoverageSums` with the predicted
mask in place of the centroid: ``recall`` = sum|x AND m| / sum|x|, ``precision`` =
sum|x AND m| / sum|m|, ``compute_share`` (= ``centroid_density``) = sum|m| / (n d).
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..clustering.common import density_to_count, top_n_mask, top_n_masks
from ..clustering.data import PackedPatterns
from ..common.device import resolve_device
from ..clustering.distance import nearest
from ..evaluation.metrics import CoverageSums, metrics_from_sums
from ..extraction.patterns import unpack_torch
from .models import ffn_flops


def mask_sums(bits: torch.Tensor, mask: torch.Tensor) -> CoverageSums:
    """Coverage of ``mask: (n, W) bool`` over the true ``bits: (n, W) bool``."""
    if bits.shape != mask.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from the patterns' {tuple(bits.shape)}")
    n, w = bits.shape
    return CoverageSums(n_tokens=n, cells=n * w, active=int(bits.sum()), hits=int((bits & mask).sum()),
                        centroid_ones=int(mask.sum()))


def centroid_union(centroids: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``(n, W)`` bool: the union of the centroids ``ids: (n, m)`` picks from ``centroids: (K, W)`` bool."""
    return centroids[ids].any(dim=1)


def _lockstep(inputs, patterns: PackedPatterns, chunk_size: int, dev) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if not isinstance(patterns, PackedPatterns):
        raise TypeError(f"patterns must be a PackedPatterns, got {type(patterns).__name__}")
    if len(inputs) != patterns.n:
        raise ValueError(f"inputs have {len(inputs)} tokens but patterns have {patterns.n}: row t must be token t")
    for start, packed in zip(range(0, patterns.n, chunk_size), patterns.packed_chunks(chunk_size, dev)):
        x = torch.as_tensor(np.asarray(inputs[start : start + chunk_size])).to(dev, torch.float32)
        yield x, unpack_torch(packed, patterns.width)


def predictor_cost(predictor: nn.Module, d_ff: int) -> dict:
    """Parameters, FLOPs per token and FLOPs as a share of a SwiGLU FFN of width ``d_ff``."""
    flops, ffn = predictor.flops_per_token(), ffn_flops(predictor.d_model, d_ff)
    return {"params": predictor.n_params(), "flops_per_token": flops, "ffn_flops_per_token": ffn,
            "flops_share": flops / ffn}


def _rows(sums: dict, extra: dict) -> list[dict]:
    return [{**extra[key], **metrics_from_sums(s), **s.as_dict()} for key, s in sums.items()]


@torch.inference_mode()
def evaluate_cluster_predictor(
    predictor: nn.Module,
    inputs,
    patterns: PackedPatterns,
    centroids,
    *,
    top_m: Sequence[int] = (1,),
    chunk_size: int = 4096,
    device: str = "auto",
    d_ff: int | None = None,
) -> dict:
    """Test metrics of a cluster predictor for ``centroids: (K, W)`` bool.

    Returns ``{"n_tokens", "oracle": coverage of the oracle centroid, "masks": [one row
    per m: {top_m, accuracy, recall, precision, compute_share, ...}], **predictor_cost}``.
    ``accuracy`` is the share of tokens whose oracle id is among the m predicted.
    ``d_ff`` (the FFN width for the FLOPs share) defaults to the patterns' width.
    """
    dev = resolve_device(device)
    c = torch.as_tensor(np.asarray(centroids)).to(dev).bool()
    if c.dim() != 2 or c.shape != (predictor.k, patterns.width):
        raise ValueError(f"centroids must be (k, width) = ({predictor.k}, {patterns.width}), got {tuple(c.shape)}")
    ms = sorted({int(m) for m in top_m})
    if not ms or ms[0] < 1 or ms[-1] > predictor.k:
        raise ValueError(f"top_m values must lie in [1, {predictor.k}], got {list(top_m)}")
    predictor = predictor.to(dev).eval()
    hits = {m: 0 for m in ms}
    sums = {m: CoverageSums() for m in ms}
    oracle = CoverageSums()
    for x, bits in _lockstep(inputs, patterns, chunk_size, dev):
        truth = nearest(bits.float(), c.float())[0]
        oracle = oracle + mask_sums(bits, c[truth])
        ids = predictor.top(x, ms[-1])
        for m in ms:
            hits[m] += int((ids[:, :m] == truth[:, None]).any(dim=1).sum())
            sums[m] = sums[m] + mask_sums(bits, centroid_union(c, ids[:, :m]))
    n = patterns.n
    extra = {m: {"top_m": m, "accuracy": hits[m] / n if n else float("nan")} for m in ms}
    return {"n_tokens": n, "oracle": {**metrics_from_sums(oracle), **oracle.as_dict()}, "masks": _rows(sums, extra),
            **predictor_cost(predictor, d_ff or patterns.width)}


@torch.inference_mode()
def evaluate_neuron_predictor(
    predictor: nn.Module,
    inputs,
    patterns: PackedPatterns,
    densities: Sequence[float],
    *,
    chunk_size: int = 4096,
    device: str = "auto",
) -> dict:
    """Test metrics of a neuron predictor: per density d, the mask of the top ``round(d * W)`` scores per token.

    Returns ``{"n_tokens", "masks": [one row per density: {density, n_keep, recall,
    precision, compute_share, ...}], **predictor_cost}``.
    """
    dev = resolve_device(device)
    if predictor.d_ff != patterns.width:
        raise ValueError(f"neuron predictor has width {predictor.d_ff}, the patterns {patterns.width}")
    keep = {float(d): density_to_count(d, patterns.width) for d in densities}
    predictor = predictor.to(dev).eval()
    sums = {d: CoverageSums() for d in keep}
    for x, bits in _lockstep(inputs, patterns, chunk_size, dev):
        masks = top_n_masks(predictor(x), list(keep.values()))  # one sort for every density
        for d, mask in zip(keep, masks):
            sums[d] = sums[d] + mask_sums(bits, mask)
    extra = {d: {"density": d, "n_keep": k} for d, k in keep.items()}
    return {"n_tokens": patterns.n, "masks": _rows(sums, extra), **predictor_cost(predictor, patterns.width)}
