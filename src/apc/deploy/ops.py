"""The decode kernels as torch operators (``torch.ops.apc.*``), so ``torch.compile`` traces through them.

Each operator has a fake (meta) implementation giving its output's shape and dtype, so a compiled graph
(``fullgraph=True``) keeps the operator as one node and Inductor fuses the norms, RoPE, residual adds
and activations around it.  On CUDA with Triton the operators launch :mod:`apc.deploy.triton_gemv`,
:mod:`apc.deploy.triton_attn` and :mod:`apc.deploy.triton_ffn`; elsewhere (CPU) a torch fallback computes
the same function (gathering the kept rows, so the fallback's time also falls with the kept share).

=========================== ==============================================================================
``apc::in_sparse_gemv``     ``(x (T, K), w_t (K, N), threshold (1,) f32 | None, scale (K,) | None)``
                            -> ``(T, N) float32``: ``out[t] = sum_k keep[t, k] x[t, k] w_t[k]``
                            with ``keep = |x * scale| > threshold`` (None keeps every channel)
``apc::out_sparse_gemv``    ``(x (T, K), w (N, K), mask (T, NM) bool)`` -> ``part (S, T, N) float32``:
                            ``part.sum(0)[t, n] = x[t] . w[n]`` where some token keeps ``n % NM``, else 0
``apc::decode_attention``   ``(q (B, nh, hd), k, v (B, nkv, hd), k_cache, v_cache (B, nkv, L, hd), pos (1,)
                            int64)`` -> ``(B, nh, hd)`` in ``q``'s dtype: writes ``k, v`` into the caches at
                            ``pos`` (mutates them), then grouped-query attention of ``q`` over positions
                            ``0 .. pos``, scale ``hd ** -0.5``
``apc::grouped_ffn``        ``(x (T, D), w_gate, w_up (F, D), w_down (D, F), ids (T,), idx (K, F) int32,
                            counts (K,) int32)`` -> ``(T, D)``: :func:`apc.deploy.ffn.grouped_ffn`
=========================== ==============================================================================

Accumulators: float32 for bf16 and fp16 inputs alike (the input-sparse kernel's atomic adds, the
attention's scores, softmax and weighted sum).  ``S`` (the output-sparse kernel's splits of the reduction
axis, summed by the caller) is 1 for the fallback; :func:`splits` gives it for both the real and the fake
path.  :func:`sparse_linear` and :func:`masked_linear` return the float32 ``(T, N)``.
Tile shapes: :data:`CONFIG` (``benchmarks/bench_gemv_bound.py`` sweeps them per weight shape).
The kernels that keep a float32 workspace and arrival counters between calls (zero before and after
each call, see :mod:`apc.deploy.triton_gemv`) allocate them at their first call on a device, which must
come before any CUDA graph capture (a warm-up call).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
from torch import Tensor

_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
try:  # Triton is optional: the torch fallback runs without it
    import triton

    from apc.deploy import triton_attn as _ta
    from apc.deploy import triton_gemv as _tg
except Exception:  # pragma: no cover - depends on the install
    _tg = _ta = None

MAX_TOKENS = 16
#: input-sparse tiles: key ``in{BT}`` or ``in{BT}:{K}x{N}`` -> ``(BM, BN, num_warps[, ITERS])``; output-sparse:
#: ``out{BT}`` or ``out{BT}:{N}x{K}`` -> ``(BN, BK, num_warps)``; attention: ``attn`` -> ``(BL, NSPLIT,
#: num_warps)``.  Dense products are not routed through these kernels: in the compiled step Inductor's own
#: product kernels, fused with the norm before and the activation or residual add after, serve them
CONFIG: dict = {"in1": (32, 256, 4), "in16": (32, 128, 4), "out1": (16, 512, 4), "out16": (32, 256, 4),
                "attn": (32, 32, 8)}


def _bt(t: int) -> int:
    return 1 if t == 1 else 16


def _kernels(x: Tensor) -> bool:
    """Whether the Triton kernels serve ``x`` (CUDA, or Triton's interpreter; at most 16 tokens)."""
    return _tg is not None and (x.is_cuda or _INTERPRET) and 0 < x.shape[0] <= MAX_TOKENS


def in_config(t: int, k: int, n: int) -> tuple:
    """The input-sparse tile ``(BM, BN, num_warps[, ITERS])`` for ``T`` tokens and a ``(K, N)`` weight."""
    bt = _bt(t)
    return tuple(CONFIG.get(f"in{bt}:{k}x{n}", CONFIG[f"in{bt}"]))


def out_config(t: int, n: int, k: int) -> tuple:
    bt = _bt(t)
    return tuple(CONFIG.get(f"out{bt}:{n}x{k}", CONFIG[f"out{bt}"]))


def splits(x: Tensor, k: int, n: int) -> int:
    """``S``, the partial sums :func:`out_sparse_gemv` returns for ``x (T, K)`` against an ``N``-wide weight."""
    if not _kernels(x):
        return 1
    return -(-k // out_config(x.shape[0], n, k)[1])


_WORK: dict = {}


def _workspace(key, make):
    """A per-device buffer kept at zero between calls (made at the first call, outside graph capture)."""
    buf = _WORK.get(key)
    if buf is None:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(f"the workspace {key[0]} is made at a kernel's first call, which must come "
                               "before CUDA graph capture (run one warm-up call first)")
        buf = _WORK[key] = make()
    return buf


# ----------------------------------------------------------------------------- input-sparse GEMV


def _check_in(x, w_t, threshold, scale):
    if x.dim() != 2 or w_t.dim() != 2 or x.shape[1] != w_t.shape[0]:
        raise ValueError(f"x (T, K) and w_t (K, N) must agree, got {tuple(x.shape)} and {tuple(w_t.shape)}")
    if scale is not None and tuple(scale.shape) != (x.shape[1],):
        raise ValueError(f"scale must have shape ({x.shape[1]},), got {tuple(scale.shape)}")
    if threshold is not None and threshold.numel() != 1:
        raise ValueError(f"threshold must be a one-element tensor, got shape {tuple(threshold.shape)}")


def _in_kernel(x, w_t, threshold, scale, tile):
    t, k = x.shape
    n = w_t.shape[1]
    if w_t.stride(1) != 1:
        raise ValueError("w_t must have contiguous rows (the transposed weight, made once per model)")
    x = x.contiguous()
    bm, bn, warps, iters = (tuple(tile) + (1,))[:4]
    dev = x.device
    acc = _workspace(("in_acc", str(dev), n), lambda: torch.zeros(MAX_TOKENS * n, device=dev, dtype=torch.float32))
    cnt = _workspace(("in_cnt", str(dev), n), lambda: torch.zeros(-(-n // 16), device=dev, dtype=torch.int32))
    out = torch.empty((t, n), device=dev, dtype=torch.float32)
    _tg.in_sparse_tile_kernel[(triton.cdiv(n, bn), triton.cdiv(k, bm * iters))](
        x, w_t, scale if scale is not None else x, threshold if threshold is not None else x, acc, cnt, out, t, k, n,
        x.stride(0), w_t.stride(0), HAS_SCALE=scale is not None, HAS_THR=threshold is not None, BT=_bt(t), BM=bm,
        BN=bn, ITERS=iters, num_warps=warps)
    return out


@torch.library.custom_op("apc::in_sparse_gemv", mutates_args=())
def in_sparse_gemv(x: Tensor, w_t: Tensor, threshold: Optional[Tensor], scale: Optional[Tensor]) -> Tensor:
    """Input-sparse GEMV, float32 ``(T, N)``; see the module docstring."""
    _check_in(x, w_t, threshold, scale)
    t, k = x.shape
    n = w_t.shape[1]
    if _kernels(x):
        return _in_kernel(x, w_t, threshold, scale, in_config(t, k, n))
    if t == 0:
        return torch.zeros((0, n), device=x.device, dtype=torch.float32)
    score = x.float() if scale is None else x.float() * scale.float()
    keep = score.abs() > (threshold.float() if threshold is not None else -1.0)
    idx = keep.any(dim=0).nonzero().squeeze(1)  # only the union's rows are read (gathered)
    xm = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)).index_select(1, idx)
    return xm.float() @ w_t.index_select(0, idx).float()


@in_sparse_gemv.register_fake
def _(x, w_t, threshold, scale):
    _check_in(x, w_t, threshold, scale)
    return x.new_empty((x.shape[0], w_t.shape[1]), dtype=torch.float32)


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
    return x.new_empty((splits(x, k, n), t, n), dtype=torch.float32)


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


# ----------------------------------------------------------------------------- decode attention


def _check_attn(q, k, v, k_cache, v_cache, pos):
    if q.dim() != 3 or k.dim() != 3 or k_cache.dim() != 4:
        raise ValueError(f"q (B, nh, hd), k, v (B, nkv, hd) and the caches (B, nkv, L, hd) are needed, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(k_cache.shape)}")
    b, nh, hd = q.shape
    nkv = k.shape[1]
    if (tuple(k.shape) != (b, nkv, hd) or tuple(v.shape) != tuple(k.shape) or nh % nkv
            or k_cache.shape[:2] != (b, nkv) or k_cache.shape[3] != hd or v_cache.shape != k_cache.shape):
        raise ValueError(f"decode attention shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v "
                         f"{tuple(v.shape)}, caches {tuple(k_cache.shape)} and {tuple(v_cache.shape)}")
    if pos.numel() != 1 or pos.dtype != torch.int64:
        raise ValueError(f"pos must be a one-element int64 tensor, got {pos.dtype} {tuple(pos.shape)}")


def attention_reference(q, k_cache, v_cache, pos):
    """Grouped-query attention of ``q (B, nh, hd)`` over cache positions ``0 .. pos`` through SDPA (``(B, nh, hd)``)."""
    b, nh, hd = q.shape
    nkv, length = k_cache.shape[1], k_cache.shape[2]
    valid = (torch.arange(length, device=q.device) <= pos).view(1, 1, 1, -1)
    qg = q.reshape(b, nkv, nh // nkv, hd)  # the group's heads as query rows
    return torch.nn.functional.scaled_dot_product_attention(qg, k_cache, v_cache, attn_mask=valid).reshape(b, nh, hd)


def _write_and_attend(q, k, v, k_cache, v_cache, pos):
    """``k, v`` written into the caches at ``pos`` (``index_copy_``), then :func:`attention_reference`."""
    k_cache.index_copy_(2, pos, k.unsqueeze(2))
    v_cache.index_copy_(2, pos, v.unsqueeze(2))
    return attention_reference(q, k_cache, v_cache, pos)


def _attn_kernel_ok(q) -> bool:
    hd = q.shape[-1]
    return _ta is not None and (q.is_cuda or _INTERPRET) and hd >= 16 and hd & (hd - 1) == 0


#: the largest batch whose decode attention runs :func:`decode_attention` (the split-KV kernel); larger batches
#: write the cache and call SDPA in the caller's graph (:func:`cached_attention`), which Inductor compiles with
#: the rest of the layer (the kernel's one program per KV head and split is slower there: H100, batch 4 and 16)
ATTN_KERNEL_MAX_BATCH = 1


def cached_attention(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Tensor) -> Tensor:
    """Cache write at ``pos`` and grouped-query decode attention, ``q (B, nh, hd)`` -> ``(B, nh, hd)``: the
    :func:`decode_attention` operator for ``B <= ATTN_KERNEL_MAX_BATCH``, else the cache write
    (``index_copy_``) and SDPA as plain torch ops, traced into the caller's compiled graph.  Eager and compiled
    steps take the same branch for the same batch."""
    if q.shape[0] <= ATTN_KERNEL_MAX_BATCH:
        return torch.ops.apc.decode_attention(q, k, v, k_cache, v_cache, pos)
    _check_attn(q, k, v, k_cache, v_cache, pos)
    return _write_and_attend(q, k, v, k_cache, v_cache, pos)


@torch.library.custom_op("apc::decode_attention", mutates_args=("k_cache", "v_cache"))
def decode_attention(q: Tensor, k: Tensor, v: Tensor, k_cache: Tensor, v_cache: Tensor, pos: Tensor) -> Tensor:
    """Cache write at ``pos`` and grouped-query decode attention; see the module docstring."""
    _check_attn(q, k, v, k_cache, v_cache, pos)
    if not _attn_kernel_ok(q):
        return _write_and_attend(q, k, v, k_cache, v_cache, pos)
    if k_cache.stride(3) != 1 or v_cache.stride() != k_cache.stride():
        raise ValueError("the caches must have contiguous rows and equal strides")
    b, nh, hd = q.shape
    nkv, length = k.shape[1], k_cache.shape[2]
    g = nh // nkv
    gp = triton.next_power_of_2(g)
    bl, nsplit, warps = CONFIG["attn"]
    ch = -(-length // nsplit)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    dev = q.device
    rows = b * nkv * nsplit * gp
    part = _workspace(("attn_part", str(dev), rows, hd), lambda: torch.empty(rows * hd, device=dev, dtype=torch.float32))
    ml = _workspace(("attn_ml", str(dev), rows), lambda: torch.empty(rows * 2, device=dev, dtype=torch.float32))
    cnt = _workspace(("attn_cnt", str(dev), b * nkv), lambda: torch.zeros(b * nkv, device=dev, dtype=torch.int32))
    out = torch.empty_like(q)
    _ta.decode_attn_kernel[(b * nkv, nsplit)](
        q, k, v, k_cache, v_cache, pos, part, ml, cnt, out, nkv, g, length, hd ** -0.5, q.stride(0), q.stride(1),
        k.stride(0), k.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), CH=ch, GP=gp, HD=hd, BL=bl,
        NSPLIT=nsplit, num_warps=warps)
    return out


@decode_attention.register_fake
def _(q, k, v, k_cache, v_cache, pos):
    _check_attn(q, k, v, k_cache, v_cache, pos)
    return torch.empty_like(q)


# ----------------------------------------------------------------------------- helpers


def sparse_linear(x: Tensor, w_t: Tensor, threshold: Tensor | None = None, scale: Tensor | None = None) -> Tensor:
    """``(x * keep) @ w_t`` in float32 ``(T, N)``: :func:`in_sparse_gemv`."""
    return torch.ops.apc.in_sparse_gemv(x, w_t, threshold, scale)


def linear(x: Tensor, w: Tensor) -> Tensor:
    """The dense ``x @ w.T`` in ``x``'s dtype, ``w (N, K)`` (in the compiled step: Inductor's product)."""
    return torch.nn.functional.linear(x, w)


def masked_linear(x: Tensor, w: Tensor, mask: Tensor) -> Tensor:
    """``x @ w.T`` on the union's output rows (others 0), float32 ``(T, N)``."""
    return torch.ops.apc.out_sparse_gemv(x, w, mask).sum(0)
