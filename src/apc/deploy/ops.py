"""The sparse decode kernels as torch operators (``torch.ops.apc.*``), so ``torch.compile`` traces through them.

Each operator has a fake (meta) implementation giving its output's shape and dtype, so a compiled graph
(``fullgraph=True``) keeps the operator as one node and Inductor fuses the norms, RoPE, residual adds
and activations around it.  On CUDA with Triton the operators launch :mod:`apc.deploy.triton_gemv` and
:mod:`apc.deploy.triton_ffn`; elsewhere (CPU) a torch fallback computes the same function (gathering
the kept rows, so the fallback's time also falls with the kept share).

=========================== ==============================================================================
``apc::in_sparse_gemv``     ``(x (T, K), w_t (K, N), threshold (1,) f32 | None, scale (K,) | None)``
                            -> ``part (S, T, N) float32``: ``part.sum(0)[t] = sum_k keep[t, k] x[t, k] w_t[k]``
                            with ``keep = |x * scale| > threshold`` (None keeps every channel)
``apc::out_sparse_gemv``    ``(x (T, K), w (N, K), mask (T, NM) bool)`` -> ``part (S, T, N) float32``:
                            ``part.sum(0)[t, n] = x[t] . w[n]`` where some token keeps ``n % NM``, else 0
``apc::grouped_ffn``        ``(x (T, D), w_gate, w_up (F, D), w_down (D, F), ids (T,), idx (K, F) int32,
                            counts (K,) int32)`` -> ``(T, D)``: :func:`apc.deploy.ffn.grouped_ffn`
=========================== ==============================================================================

``S`` (the splits of the reduction axis, summed by the caller) is 1 for the fallback and
``ceil(K / chunk)`` for the kernels; :func:`splits` gives it for both the real and the fake path.
:func:`sparse_linear` and :func:`masked_linear` return the summed float32 ``(T, N)``.
Tile shapes: :data:`CONFIG` (``benchmarks/bench_gemv_bound.py`` sweeps them per weight shape).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
try:  # Triton is optional: the torch fallback runs without it
    import triton

    from apc.deploy import triton_gemv as _tg
except Exception:  # pragma: no cover - depends on the install
    _tg = None

MAX_TOKENS = 16
#: input-sparse tiles: key ``in{BT}`` or ``in{BT}:{K}x{N}`` -> ``(BK, BN, CHUNK, COMPACT, num_warps, num_stages)``;
#: output-sparse: ``out{BT}`` or ``out{BT}:{N}x{K}`` -> ``(BN, BK, num_warps)``
CONFIG: dict = {"in1": (32, 256, 512, 1, 4, 3), "in16": (32, 128, 512, 1, 4, 2), "out1": (16, 512, 4),
                "out16": (32, 256, 4)}


def _bt(t: int) -> int:
    return 1 if t == 1 else 16


def _kernels(x: Tensor) -> bool:
    """Whether the Triton kernels serve ``x`` (CUDA, or Triton's interpreter; at most 16 tokens)."""
    return _tg is not None and (x.is_cuda or _INTERPRET) and 0 < x.shape[0] <= MAX_TOKENS


def in_config(t: int, k: int, n: int) -> tuple:
    bt = _bt(t)
    return tuple(CONFIG.get(f"in{bt}:{k}x{n}", CONFIG[f"in{bt}"]))


def out_config(t: int, n: int, k: int) -> tuple:
    bt = _bt(t)
    return tuple(CONFIG.get(f"out{bt}:{n}x{k}", CONFIG[f"out{bt}"]))


def splits(x: Tensor, k: int, n: int, kind: str = "in") -> int:
    """``S``, the partial sums an operator returns for ``x (T, K)`` against an ``N``-wide weight."""
    if not _kernels(x):
        return 1
    if kind == "in":
        return -(-k // in_config(x.shape[0], k, n)[2])
    return -(-k // out_config(x.shape[0], n, k)[1])


# ----------------------------------------------------------------------------- input-sparse GEMV


def _check_in(x, w_t, threshold, scale):
    if x.dim() != 2 or w_t.dim() != 2 or x.shape[1] != w_t.shape[0]:
        raise ValueError(f"x (T, K) and w_t (K, N) must agree, got {tuple(x.shape)} and {tuple(w_t.shape)}")
    if scale is not None and tuple(scale.shape) != (x.shape[1],):
        raise ValueError(f"scale must have shape ({x.shape[1]},), got {tuple(scale.shape)}")
    if threshold is not None and threshold.numel() != 1:
        raise ValueError(f"threshold must be a one-element tensor, got shape {tuple(threshold.shape)}")


@torch.library.custom_op("apc::in_sparse_gemv", mutates_args=())
def in_sparse_gemv(x: Tensor, w_t: Tensor, threshold: Optional[Tensor], scale: Optional[Tensor]) -> Tensor:
    """Input-sparse GEMV partial sums; see the module docstring."""
    _check_in(x, w_t, threshold, scale)
    t, k = x.shape
    n = w_t.shape[1]
    if _kernels(x):
        if w_t.stride(1) != 1:
            raise ValueError("w_t must have contiguous rows (the transposed weight, made once per model)")
        x = x.contiguous()
        bk, bn, chunk, compact, warps, stages = in_config(t, k, n)
        s = -(-k // chunk)
        part = torch.empty((s, t, n), device=x.device, dtype=torch.float32)
        idx = torch.empty(k, device=x.device, dtype=torch.int32)
        _tg.in_sparse_part_kernel[(triton.cdiv(n, bn), s)](
            x, w_t, scale if scale is not None else x, threshold if threshold is not None else x, part, idx, t, k, n,
            x.stride(0), w_t.stride(0), part.stride(0), part.stride(1), HAS_SCALE=scale is not None,
            HAS_THR=threshold is not None, BT=_bt(t), BK=bk, BN=bn, CHUNK=chunk, COMPACT=bool(compact),
            DYN=not _INTERPRET, num_warps=warps, num_stages=stages)
        return part
    if t == 0:
        return torch.zeros((1, 0, n), device=x.device, dtype=torch.float32)
    score = x.float() if scale is None else x.float() * scale.float()
    keep = score.abs() > (threshold.float() if threshold is not None else -1.0)
    idx = keep.any(dim=0).nonzero().squeeze(1)  # only the union's rows are read (gathered)
    xm = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)).index_select(1, idx)
    return (xm.float() @ w_t.index_select(0, idx).float()).unsqueeze(0)


@in_sparse_gemv.register_fake
def _(x, w_t, threshold, scale):
    _check_in(x, w_t, threshold, scale)
    t, k = x.shape
    n = w_t.shape[1]
    return x.new_empty((splits(x, k, n, "in"), t, n), dtype=torch.float32)


# ----------------------------------------------------------------------------- output-sparse GEMV


def _check_out(x, w, mask):
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x (T, K) and w (N, K) must agree, got {tuple(x.shape)} and {tuple(w.shape)}")
    if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[0] != x.shape[0] or w.shape[0] % mask.shape[1]:
        raise ValueError(f"mask must be a bool ({x.shape[0]}, NM) tensor with {w.shape[0]} % NM == 0, got "
                         f"{mask.dtype} {tuple(mask.shape)}")


@torch.library.custom_op("apc::out_sparse_gemv", mutates_args=())
def out_sparse_gemv(x: Tensor, w: Tensor, mask: Tensor) -> Tensor:
    """Output-sparse GEMV partial sums; see the module docstring."""
    _check_out(x, w, mask)
    t, k = x.shape
    n = w.shape[0]
    if _kernels(x):
        if w.stride(1) != 1:
            raise ValueError("w must have contiguous rows")
        x = x.contiguous()
        m = mask.contiguous().view(torch.uint8)
        bn, bk, warps = out_config(t, n, k)
        s = -(-k // bk)
        part = torch.empty((s, t, n), device=x.device, dtype=torch.float32)
        _tg.out_sparse_part_kernel[(triton.cdiv(n, bn), s)](
            x, w, m, part, t, k, n, m.shape[1], x.stride(0), w.stride(0), m.stride(0), part.stride(0), part.stride(1),
            BT=_bt(t), BN=bn, BK=bk, num_warps=warps)
        return part
    out = torch.zeros((1, t, n), device=x.device, dtype=torch.float32)
    if t:
        idx = mask.any(dim=0).repeat(n // mask.shape[1]).nonzero().squeeze(1)
        out[0, :, idx] = x.float() @ w.index_select(0, idx).float().t()
    return out


@out_sparse_gemv.register_fake
def _(x, w, mask):
    _check_out(x, w, mask)
    t, k = x.shape
    n = w.shape[0]
    return x.new_empty((splits(x, k, n, "out"), t, n), dtype=torch.float32)


# ----------------------------------------------------------------------------- grouped FFN


@torch.library.custom_op("apc::grouped_ffn", mutates_args=())
def grouped_ffn(x: Tensor, w_gate: Tensor, w_up: Tensor, w_down: Tensor, ids: Tensor, idx: Tensor,
                counts: Tensor) -> Tensor:
    """Cluster-grouped masked SiLU FFN (:func:`apc.deploy.ffn.grouped_ffn`) on a prebuilt group index."""
    from apc.deploy.ffn import GroupIndex, grouped_ffn as _grouped

    return _grouped(x, w_gate, w_up, w_down, ids, GroupIndex(idx, counts), act="silu", check_ids=False)


@grouped_ffn.register_fake
def _(x, w_gate, w_up, w_down, ids, idx, counts):
    if x.dim() != 2 or w_down.shape[0] != x.shape[1]:
        raise ValueError(f"x (T, D) and w_down (D, F) must agree, got {tuple(x.shape)} and {tuple(w_down.shape)}")
    return torch.empty_like(x)


# ----------------------------------------------------------------------------- helpers


def sparse_linear(x: Tensor, w_t: Tensor, threshold: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    """``(x * keep) @ w_t`` in float32 ``(T, N)``: :func:`in_sparse_gemv`'s partial sums, summed."""
    return torch.ops.apc.in_sparse_gemv(x, w_t, threshold, scale).sum(0)


def masked_linear(x: Tensor, w: Tensor, mask: Tensor) -> Tensor:
    """``x @ w.T`` on the union's output rows (others 0), float32 ``(T, N)``."""
    return torch.ops.apc.out_sparse_gemv(x, w, mask).sum(0)
