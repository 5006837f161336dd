"""Input- and output-sparse GEMV for decode (TEAL's design), and the masked FFN lines built on them.

A GEMV ``y = W x`` at decode reads every weight once; a sparse line reads only the weights of kept
channels.  The weights are stored so that a skipped channel skips one *contiguous* row:

* input-sparse (:func:`in_sparse_gemv`): ``w_t (K, N)``, the transposed ``nn.Linear`` weight; row
  ``k`` is read when ``|x[t, k] * scale[k]| > threshold`` for any token ``t`` of the call (the union),
  each token keeping its own channels.  TEAL (``scale`` None), WINA (``scale`` the weight's column
  norms), and every down projection whose input is already zero where dropped (threshold 0).
* output-sparse (:func:`out_sparse_gemv`): ``w (N, K)`` row-major; row ``n`` is read when some token
  keeps neuron ``n`` in its mask (CATS's up projection, the per-token and cluster masks).

On CUDA these run the Triton kernels of :mod:`apc.deploy.triton_sparse` (the threshold test fused into
the weight load, no index list; split-K over thread blocks with float32 atomic adds; weights streamed
with ``evict_first``, activations kept with ``evict_last``), for ``T <= 16`` tokens.  Elsewhere, or
with ``backend="torch"``, a torch fallback computes the same function in float32.

FFN lines on prepared weights (:func:`prepare_ffn`), ``x (T, d_model)`` -> ``(T, d_model)`` in ``x``'s dtype:

=================== =======================================================================
:func:`teal_ffn`    gate/up on ``x`` thresholded at ``thr_in``, down on ``h`` thresholded at ``thr_h``
                    (``scale_in``/``scale_h``: WINA's scaled scores, :func:`wina_scales`)
:func:`cats_ffn_sparse` gate dense, up and down on the neurons with ``|act(gate)| >= thr``
:func:`mask_ffn`    gate, up and down on the neurons of a per-token mask ``(T, d_ff) bool``
                    (the per-token line; the cluster line passes ``masks[ids]``)
=================== =======================================================================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from apc.deploy.ffn import _INTERPRET, _act_code, _act_fn, _say_once

try:  # Triton is optional: the torch fallback runs without it
    import triton

    from apc.deploy import triton_sparse as _ts
except Exception as exc:  # pragma: no cover - depends on the install
    _ts = None
    _TRITON_ERROR = f"{type(exc).__name__}: {exc}"
else:
    _TRITON_ERROR = ""

MAX_TOKENS = 16
#: tile shapes ``(BK, BN, num_warps, ITERS)`` for the input-sparse kernel (key ``in{BT}``, or ``in{BT}:{K}x{N}``
#: for one weight shape) and ``(BN, BK, num_warps)`` for the output-sparse one (``out{BT}[:{N}x{K}]``);
#: ``benchmarks/bench_sparse_gemv.py`` sweeps them
CONFIG = {"in1": (32, 512, 4, 1), "in16": (64, 128, 4, 1), "out1": (16, 512, 4), "out16": (32, 256, 4)}


def _triton_ok(x: torch.Tensor, backend: str, what: str) -> bool:
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"unknown backend {backend!r}; expected auto, triton or torch")
    if backend == "torch":
        return False
    why = ""
    if _ts is None:
        why = f"Triton is not importable ({_TRITON_ERROR})"
    elif not x.is_cuda and not _INTERPRET:
        why = f"the tensors are on {x.device}, not CUDA"
    elif x.shape[0] > MAX_TOKENS:
        why = f"{x.shape[0]} tokens (the sparse GEMV serves at most {MAX_TOKENS})"
    if why:
        _say_once(f"sparse GEMV {what}: {'Triton asked for, but ' if backend == 'triton' else ''}{why}; torch fallback")
        return False
    return True


def _bt(t: int) -> int:
    return 1 if t == 1 else 16


def _check_acc(acc, t, n, device):
    if acc is None:
        return torch.zeros((t, n), device=device, dtype=torch.float32)
    if acc.dtype != torch.float32 or tuple(acc.shape) != (t, n) or acc.stride(1) != 1:
        raise ValueError(f"acc must be a float32 ({t}, {n}) tensor with contiguous rows, got {acc.dtype} "
                         f"{tuple(acc.shape)}")
    return acc


def in_sparse_gemv(x, w_t, threshold=None, scale=None, acc=None, backend="auto") -> torch.Tensor:
    """``acc[t] += sum_k keep[t, k] x[t, k] w_t[k]`` with ``keep = |x * scale| > threshold``.

    ``x (T, K)``; ``w_t (K, N)`` with contiguous rows; ``scale (K,)`` or None; ``threshold`` a float
    (None keeps every channel).  ``acc (T, N) float32``: added into and returned (zeros if None).
    """
    if x.dim() != 2 or w_t.dim() != 2 or x.shape[1] != w_t.shape[0]:
        raise ValueError(f"x (T, K) and w_t (K, N) must agree, got {tuple(x.shape)} and {tuple(w_t.shape)}")
    if scale is not None and tuple(scale.shape) != (x.shape[1],):
        raise ValueError(f"scale must have shape ({x.shape[1]},), got {tuple(scale.shape)}")
    t, k = x.shape
    n = w_t.shape[1]
    acc = _check_acc(acc, t, n, x.device)
    thr = -1.0 if threshold is None else float(threshold)
    if t and _triton_ok(x, backend, "input-sparse"):
        if w_t.stride(1) != 1:
            raise ValueError("w_t must have contiguous rows (the transposed weight, made once per model)")
        x = x.contiguous()
        bt = _bt(t)
        bk, bn, warps, iters = CONFIG.get(f"in{bt}:{k}x{n}", CONFIG[f"in{bt}"])
        _ts.in_sparse_kernel[(triton.cdiv(n, bn), triton.cdiv(k, bk * iters))](
            x, w_t, scale if scale is not None else x, acc, thr, t, k, n, x.stride(0), w_t.stride(0), acc.stride(0),
            HAS_SCALE=scale is not None, BT=bt, BK=bk, BN=bn, ITERS=iters, num_warps=warps)
        return acc
    score = x.float() if scale is None else x.float() * scale.float()
    keep = score.abs() > thr
    idx = keep.any(dim=0).nonzero().squeeze(1)  # the union's rows alone are read (gathered)
    xm = torch.where(keep, x, torch.zeros((), dtype=x.dtype, device=x.device)).index_select(1, idx)
    rows = w_t.index_select(0, idx)
    return acc.add_(xm @ rows if x.dtype == torch.float32 and rows.dtype == torch.float32 else xm.float() @ rows.float())


def out_sparse_gemv(x, w, mask, acc=None, backend="auto") -> torch.Tensor:
    """``acc[t, n] += x[t] . w[n]`` for the neurons ``n`` that some token keeps: ``mask[:, n % NM].any()``.

    ``x (T, K)``; ``w (N, K)`` with contiguous rows; ``mask (T, NM) bool`` with ``N % NM == 0`` (``NM =
    N / 2``: one mask for stacked gate and up weights).  Rows outside the union are left as they are.
    """
    if x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]:
        raise ValueError(f"x (T, K) and w (N, K) must agree, got {tuple(x.shape)} and {tuple(w.shape)}")
    t, k = x.shape
    n = w.shape[0]
    if mask.dtype != torch.bool or mask.dim() != 2 or mask.shape[0] != t or n % mask.shape[1]:
        raise ValueError(f"mask must be a bool ({t}, NM) tensor with {n} % NM == 0, got {mask.dtype} "
                         f"{tuple(mask.shape)}")
    acc = _check_acc(acc, t, n, x.device)
    if t and _triton_ok(x, backend, "output-sparse"):
        if w.stride(1) != 1:
            raise ValueError("w must have contiguous rows")
        x = x.contiguous()
        m = mask.contiguous().view(torch.uint8)
        bt = _bt(t)
        bn, bk, warps = CONFIG.get(f"out{bt}:{n}x{k}", CONFIG[f"out{bt}"])
        _ts.out_sparse_kernel[(triton.cdiv(n, bn), triton.cdiv(k, bk))](
            x, w, m, acc, t, k, n, m.shape[1], x.stride(0), w.stride(0), m.stride(0), acc.stride(0),
            BT=bt, BN=bn, BK=bk, num_warps=warps)
        return acc
    union = mask.any(dim=0).repeat(n // mask.shape[1])
    idx = union.nonzero().squeeze(1)
    acc[:, idx] += x.float() @ w.index_select(0, idx).float().t()
    return acc


def act_mul(acc, out_dtype, a=None, mask=None, act="silu", zero=None, backend="auto") -> torch.Tensor:
    """``h = act(gate) * up [* mask]`` from float32 ``acc``, then ``acc`` (and ``zero``) set to zero.

    ``acc (T, 2F)``: gate then up columns; with ``a (T, F)`` (the activated gate, given) ``acc (T, F)``
    holds up alone.  ``mask (T, F) bool`` or None.  ``zero (T, Z) float32``: another accumulator to clear
    (``Z <= max(F, ...)``).  Returns ``h (T, F)`` in ``out_dtype``.
    """
    t = acc.shape[0]
    f = acc.shape[1] if a is not None else acc.shape[1] // 2
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != (t, f)):
        raise ValueError(f"mask must be a bool ({t}, {f}) tensor, got {mask.dtype} {tuple(mask.shape)}")
    code = _act_code(act)
    if t and code is not None and _triton_ok(acc, backend, "act_mul"):
        h = torch.empty((t, f), device=acc.device, dtype=out_dtype)
        z = zero if zero is not None else acc
        zw = zero.shape[1] if zero is not None else 0
        m = mask.contiguous().view(torch.uint8) if mask is not None else acc
        block = 1024
        _ts.act_mul_kernel[(triton.cdiv(max(f, zw), block), t)](
            acc, a if a is not None else acc, m, h, z, f, zw, acc.stride(0), a.stride(0) if a is not None else 0,
            m.stride(0) if mask is not None else 0, h.stride(0), z.stride(0),
            ACT=code, HAS_A=a is not None, HAS_MASK=mask is not None, BLOCK=block, num_warps=4)
        return h
    if a is None:
        g, u = acc[:, :f], acc[:, f:]
        av = _act_fn(act)(g.to(out_dtype).float()).to(out_dtype).float()
    else:
        av, u = a.float(), acc
    h = av * u.to(out_dtype).float()  # a new tensor: acc may be cleared below
    if mask is not None:
        h = h.masked_fill(~mask, 0)
    acc.zero_()
    if zero is not None:
        zero.zero_()
    return h.to(out_dtype)


def take(acc, out_dtype, backend="auto") -> torch.Tensor:
    """``acc (T, N) float32`` in ``out_dtype``; ``acc`` is then zero."""
    if acc.shape[0] and _triton_ok(acc, backend, "take"):
        out = torch.empty(acc.shape, device=acc.device, dtype=out_dtype)
        block = 1024
        _ts.take_kernel[(triton.cdiv(acc.shape[1], block), acc.shape[0])](
            acc, out, acc.shape[1], acc.stride(0), out.stride(0), BLOCK=block, num_warps=4)
        return out
    out = acc.to(out_dtype, copy=True)
    acc.zero_()
    return out


# ----------------------------------------------------------------------------- FFN lines


@dataclass
class SparseFFNWeights:
    """One gated FFN in the sparse kernels' layouts: ``wgu (2F, D)`` gate rows then up rows,
    ``wgu_t (D, 2F)`` its transpose (contiguous rows), ``wd_t (F, D)`` the transposed down weight."""

    wgu: torch.Tensor
    wgu_t: torch.Tensor
    wd_t: torch.Tensor

    @property
    def d_model(self) -> int:
        return int(self.wgu.shape[1])

    @property
    def d_ff(self) -> int:
        return int(self.wd_t.shape[0])

    @staticmethod
    def workspace(name: str, t: int, n: int, device) -> torch.Tensor:
        """A float32 ``(t, n)`` accumulator kept at zero between calls (shared by FFNs of one shape)."""
        key = (name, t, n, str(device))
        if key not in _WORKSPACE:
            _WORKSPACE[key] = torch.zeros((t, n), device=device, dtype=torch.float32)
        return _WORKSPACE[key]


_WORKSPACE: dict = {}


def prepare_ffn(w_gate, w_up, w_down) -> SparseFFNWeights:
    """``w_gate, w_up (F, D)``, ``w_down (D, F)`` (``nn.Linear`` layouts) -> :class:`SparseFFNWeights`
    (two copies of gate/up, one of down; made once per model)."""
    if w_gate.shape != w_up.shape or w_down.shape != w_gate.shape[::-1]:
        raise ValueError(f"gate {tuple(w_gate.shape)}, up {tuple(w_up.shape)} and down {tuple(w_down.shape)} "
                         "must be (F, D), (F, D) and (D, F)")
    wgu = torch.cat([w_gate, w_up], 0).contiguous()
    return SparseFFNWeights(wgu, wgu.t().contiguous(), w_down.t().contiguous())


def wina_scales(p: SparseFFNWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """WINA's per-channel weight norms: ``(||[W_gate; W_up][:, k]||_2 (D,), ||W_down[:, j]||_2 (F,))``, float32."""
    return p.wgu_t.float().norm(dim=1), p.wd_t.float().norm(dim=1)


def _down(h, p, x_dtype, threshold, scale, backend):
    acc = p.workspace("down", h.shape[0], p.d_model, h.device)
    in_sparse_gemv(h, p.wd_t, threshold, scale, acc, backend)
    return take(acc, x_dtype, backend)


def teal_ffn(x, p: SparseFFNWeights, thr_in: float, thr_h: float, scale_in=None, scale_h=None, act="silu",
             backend="auto") -> torch.Tensor:
    """TEAL (and, with scales, WINA): gate/up read the input channels with ``|x * scale_in| > thr_in``,
    down the intermediate channels with ``|h * scale_h| > thr_h``.  ``x (T, D)`` -> ``(T, D)``."""
    t = x.shape[0]
    acc = p.workspace("gate_up", t, 2 * p.d_ff, x.device)
    in_sparse_gemv(x, p.wgu_t, thr_in, scale_in, acc, backend)
    zero = p.workspace("down", t, p.d_model, x.device)
    h = act_mul(acc, x.dtype, act=act, zero=zero, backend=backend)
    return _down(h, p, x.dtype, thr_h, scale_h, backend)


def mask_ffn(x, p: SparseFFNWeights, mask, act="silu", backend="auto") -> torch.Tensor:
    """Per-token neuron mask ``mask (T, F) bool``: gate/up rows of the union read, each token's dropped
    neurons zeroed, down on the nonzero intermediate channels.  ``x (T, D)`` -> ``(T, D)``."""
    t = x.shape[0]
    acc = p.workspace("gate_up", t, 2 * p.d_ff, x.device)
    out_sparse_gemv(x, p.wgu, mask, acc, backend)
    zero = p.workspace("down", t, p.d_model, x.device)
    h = act_mul(acc, x.dtype, mask=mask, act=act, zero=zero, backend=backend)
    return _down(h, p, x.dtype, 0.0, None, backend)


def cats_ffn_sparse(x, p: SparseFFNWeights, threshold: float, act="silu", backend="auto") -> torch.Tensor:
    """CATS: the gate dense, up and down on the neurons with ``|act(gate)| >= threshold`` (per token,
    the union read).  ``x (T, D)`` -> ``(T, D)``."""
    t, f = x.shape[0], p.d_ff
    a = _act_fn(act)(F.linear(x, p.wgu[:f]))
    keep = a.abs().float() >= float(threshold)
    acc = p.workspace("up", t, f, x.device)
    out_sparse_gemv(x, p.wgu[f:], keep, acc, backend)
    zero = p.workspace("down", t, p.d_model, x.device)
    h = act_mul(acc, x.dtype, a=a, mask=keep, act=act, zero=zero, backend=backend)
    return _down(h, p, x.dtype, 0.0, None, backend)


def reference_ffn(x, w_gate, w_up, w_down, *, in_keep=None, h_keep=None, act="silu") -> torch.Tensor:
    """Dense torch reference: ``W_down ((act(W_gate x') * (W_up x')) * h_keep)`` with ``x' = x * in_keep``;
    ``in_keep (T, D)``, ``h_keep (T, F)`` bool or None.  Products in ``x``'s dtype."""
    xm = x if in_keep is None else x.masked_fill(~in_keep, 0)
    h = _act_fn(act)(F.linear(xm, w_gate)) * F.linear(xm, w_up)
    if h_keep is not None:
        h = h.masked_fill(~h_keep, 0)
    return F.linear(h, w_down)
