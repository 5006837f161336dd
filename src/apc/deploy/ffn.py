"""Masked gated FFN ``y = W_down (act(W_gate x) * (W_up x) * mask)`` computing only the kept neurons.

Shapes: ``x (T, d_model)``; ``w_gate, w_up (d_ff, d_model)``; ``w_down (d_model, d_ff)`` (the
``nn.Linear`` layouts; ``w_down`` may have any strides, and :func:`column_major` gives the layout
in which a kept neuron's column is contiguous, the fast one for the CUDA kernels); ``y (T, d_model)``
in the dtype of ``x``.  ``act`` is ``"silu"``, ``"relu"`` or an activation module/callable.

Kernels (each equals :func:`masked_dense_ffn` with the mask it implies):

=============== ============================================================================
``dense``       every neuron (the reference)
``per_token``   per-token masks ``(T, d_ff)``; runs the rows of the union of the batch's masks
``grouped``     cluster masks ``(K, d_ff)`` and per-token ids ``(T,)``: tokens sorted by id, one
                grouped launch over the groups, each group's rows read by index
``cats``        ``W_gate`` dense, ``W_up``/``W_down`` on the kept neurons, mask = ``|act(gate)| >= thr``
=============== ============================================================================

On CUDA one token runs two GEMV kernels; more tokens run the two grouped kernels of
:mod:`apc.deploy.triton_ffn` (the per-token and CATS paths as one group: the union of the masks).
``backend`` is ``"auto"`` (Triton on CUDA, else torch), ``"triton"`` or ``"torch"``.  Where Triton or
CUDA is unavailable, or the activation has no Triton form, the torch fallback runs and one log line
says so.  The torch fallback gathers the kept rows with ``index_select`` and loops over the
non-empty groups.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from apc.common.progress import get_logger

KERNELS = ("dense", "per_token", "grouped", "gate")  # gate: the mask decided by the gate (CATS, CHESS)
BACKENDS = ("auto", "triton", "torch")
_log = get_logger("apc.deploy")
_said: set[str] = set()
_ACT_CODES = {"silu": 0, "relu": 1}
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's CPU interpreter (debugging)

try:  # Triton is optional: the torch fallback runs without it
    import triton

    from apc.deploy import triton_ffn as _tk
except Exception as exc:  # pragma: no cover - depends on the install
    _tk = None
    _TRITON_ERROR = f"{type(exc).__name__}: {exc}"
else:
    _TRITON_ERROR = ""


def _say_once(msg: str) -> None:
    if msg not in _said:
        _said.add(msg)
        _log.info(msg)


# ----------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class GroupIndex:
    """Kept-neuron lists of ``K`` group masks: ``idx (K, d_ff) int32`` with each row's kept neuron ids
    first (ascending), ``counts (K,) int32`` kept per group.  Build once per mask set (:func:`group_index`)."""

    idx: torch.Tensor
    counts: torch.Tensor

    @property
    def n_groups(self) -> int:
        return int(self.idx.shape[0])

    @property
    def width(self) -> int:
        return int(self.idx.shape[1])


def group_index(masks: torch.Tensor) -> GroupIndex:
    """``masks (K, d_ff) bool`` -> :class:`GroupIndex` on the same device."""
    if masks.dim() != 2 or masks.shape[0] < 1:
        raise ValueError(f"group masks must have shape (K, d_ff) with K >= 1, got {tuple(masks.shape)}")
    m = masks if masks.dtype == torch.bool else masks != 0
    # a stable sort of "dropped" flags puts the kept ids first, in ascending order
    idx = torch.argsort((~m).to(torch.int8), dim=1, stable=True).to(torch.int32)
    return GroupIndex(idx.contiguous(), m.sum(dim=1, dtype=torch.int32))


def column_major(w_down: torch.Tensor) -> torch.Tensor:
    """``w_down (d_model, d_ff)`` with the same values, stored so that each column is contiguous
    (one copy of the weight, made once per model; the fast layout for the CUDA kernels)."""
    return w_down.t().contiguous().t()


def _check_weights(x, w_gate, w_up, w_down) -> tuple[int, int]:
    if x.dim() != 2:
        raise ValueError(f"x must have shape (T, d_model), got {tuple(x.shape)}")
    d_model = x.shape[1]
    if w_gate.dim() != 2 or w_gate.shape[1] != d_model:
        raise ValueError(f"w_gate must have shape (d_ff, {d_model}), got {tuple(w_gate.shape)}")
    d_ff = w_gate.shape[0]
    if tuple(w_up.shape) != (d_ff, d_model):
        raise ValueError(f"w_up must have shape ({d_ff}, {d_model}) like w_gate, got {tuple(w_up.shape)}")
    if tuple(w_down.shape) != (d_model, d_ff):
        raise ValueError(f"w_down must have shape ({d_model}, {d_ff}), got {tuple(w_down.shape)}")
    for name, w in (("w_gate", w_gate), ("w_up", w_up), ("w_down", w_down)):
        if w.device != x.device or w.dtype != x.dtype:
            raise ValueError(f"{name} is {w.dtype} on {w.device}, x is {x.dtype} on {x.device}: they must match")
    return d_model, d_ff


def _act_fn(act):
    if isinstance(act, str):
        if act not in _ACT_CODES:
            raise ValueError(f"unknown activation {act!r}; expected one of {', '.join(_ACT_CODES)} or a callable")
        return F.silu if act == "silu" else F.relu
    if not callable(act):
        raise ValueError(f"act must be 'silu', 'relu' or a callable, got {act!r}")
    return act


def _act_code(act) -> int | None:
    """Triton code of ``act``, or None where the kernels have no form of it."""
    if isinstance(act, str):
        return _ACT_CODES[act]
    if act is F.silu or isinstance(act, nn.SiLU) or type(act).__name__ in ("SiLU", "SiLUActivation"):
        return 0
    if act is F.relu or isinstance(act, nn.ReLU):
        return 1
    return None


def use_triton(x: torch.Tensor, act, backend: str, kernel: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return False
    why = ""
    if _tk is None:
        why = f"Triton is not importable ({_TRITON_ERROR})"
    elif not x.is_cuda and not _INTERPRET:
        why = f"the tensors are on {x.device}, not CUDA"
    elif _act_code(act) is None:
        why = f"activation {type(act).__name__} has no Triton form"
    elif x.dtype not in (torch.bfloat16, torch.float16, torch.float32):
        why = f"dtype {x.dtype} is not supported by the Triton kernels"
    if why:
        asked = "Triton asked for, but " if backend == "triton" else ""
        _say_once(f"masked FFN kernel {kernel!r}: {asked}{why}; using the torch fallback")
        return False
    return True


# ----------------------------------------------------------------------------- references


def dense_ffn(x, w_gate, w_up, w_down, act="silu") -> torch.Tensor:
    """Dense gated FFN: ``x (T, d_model)`` -> ``(T, d_model)``."""
    _check_weights(x, w_gate, w_up, w_down)
    a = _act_fn(act)
    return F.linear(a(F.linear(x, w_gate)) * F.linear(x, w_up), w_down)


def masked_dense_ffn(x, w_gate, w_up, w_down, mask, act="silu") -> torch.Tensor:
    """Dense products with the intermediate masked: ``mask (T, d_ff) bool`` -> ``(T, d_model)``."""
    _, d_ff = _check_weights(x, w_gate, w_up, w_down)
    _check_mask(mask, x.shape[0], d_ff, x.device)
    a = _act_fn(act)
    h = a(F.linear(x, w_gate)) * F.linear(x, w_up)
    return F.linear(h.masked_fill(~mask, 0), w_down)


def _check_mask(mask, n_tokens, d_ff, device):
    if mask.dtype != torch.bool or tuple(mask.shape) != (n_tokens, d_ff):
        raise ValueError(f"mask must be a bool tensor of shape ({n_tokens}, {d_ff}), got {mask.dtype} "
                         f"{tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"mask is on {mask.device}, x on {device}")


# ----------------------------------------------------------------------------- torch fallback


def _fb_rows(x, w_gate, w_up, w_down, idx, act, token_mask=None):
    """Fallback on the neurons ``idx (n,) int64`` for all rows of ``x``; ``token_mask (T, n) bool``."""
    gk = w_gate.index_select(0, idx)
    uk = w_up.index_select(0, idx)
    h = act(F.linear(x, gk)) * F.linear(x, uk)
    if token_mask is not None:
        h = h.masked_fill(~token_mask, 0)
    return h @ down_rows(w_down, idx)


def down_rows(w_down: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Kept columns of ``w_down (d_model, d_ff)`` as rows ``(n, d_model)``, gathered in the cheaper layout."""
    wt = w_down.t()
    return wt.index_select(0, idx) if wt.is_contiguous() else w_down.index_select(1, idx).t()


def _fb_grouped(x, w_gate, w_up, w_down, ids, gi: GroupIndex, act):
    order = torch.argsort(ids, stable=True)
    counts = torch.bincount(ids, minlength=gi.n_groups).tolist()
    kept = gi.counts.tolist()
    y = torch.zeros_like(x)
    start = 0
    for g in (g for g, c in enumerate(counts) if c):  # the non-empty groups only
        rows = order[start:start + counts[g]]
        start += counts[g]
        if kept[g]:
            idx = gi.idx[g, :kept[g]].long()
            y.index_copy_(0, rows, _fb_rows(x.index_select(0, rows), w_gate, w_up, w_down, idx, act))
    return y


# ----------------------------------------------------------------------------- Triton launch


def kernel_config(rows_per_group: float, dtype) -> dict:
    """Tile sizes by the mean rows per group (the M of each group's product)."""
    if rows_per_group <= 16:
        c = dict(BM=16, BN1=16, BK1=256, W1=4, S1=4, BN2=128, BK2=64, W2=4, S2=4)
    elif rows_per_group <= 64:
        c = dict(BM=64, BN1=64, BK1=64, W1=4, S1=4, BN2=128, BK2=64, W2=4, S2=4)
    else:
        c = dict(BM=128, BN1=64, BK1=64, W1=8, S1=3, BN2=128, BK2=64, W2=8, S2=3)
    if dtype == torch.float32:  # twice the bytes per element: halve the k tiles
        c.update(BK1=min(c["BK1"], 32), BK2=32, S1=2, S2=2)
    return c


_SCHEDULES: dict = {}


def single_schedule(n_tokens: int, bm: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """One group holding all tokens in their order: ``(order (T,), blocks (3, B))``, cached."""
    key = (n_tokens, bm, str(device))
    if key not in _SCHEDULES:
        nb = -(-n_tokens // bm)
        r0 = torch.arange(nb, device=device, dtype=torch.int32) * bm
        blocks = torch.stack([torch.zeros_like(r0), r0, torch.clamp(r0 + bm, max=n_tokens)]).contiguous()
        _SCHEDULES[key] = (torch.arange(n_tokens, device=device, dtype=torch.int32), blocks)
    return _SCHEDULES[key]


def group_schedule(ids: torch.Tensor, n_groups: int, bm: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens sorted by group and cut into blocks of ``bm`` rows, on the device, with no host sync.

    ``ids (T,) int64`` in ``[0, n_groups)`` -> ``order (T,) int32`` (sorted row -> token) and
    ``blocks (3, B) int32`` (group, first row, end row) with ``B = ceil(T/bm) + min(K, T)``, an
    upper bound on the blocks; unused blocks have first == end.
    """
    n = ids.numel()
    dev = ids.device
    order = torch.argsort(ids, stable=True)
    counts = torch.zeros(n_groups, dtype=torch.int64, device=dev).index_add_(
        0, ids, torch.ones(n, dtype=torch.int64, device=dev))
    starts = torch.cumsum(counts, 0) - counts
    nblk = (counts + bm - 1) // bm
    blk_end = torch.cumsum(nblk, 0)
    n_blocks = -(-n // bm) + min(n_groups, n)
    b = torch.arange(n_blocks, device=dev)
    g = torch.searchsorted(blk_end, b, right=True)
    valid = g < n_groups
    g = torch.clamp(g, max=n_groups - 1)
    r0 = starts[g] + (b - (blk_end[g] - nblk[g])) * bm
    r1 = torch.minimum(r0 + bm, starts[g] + counts[g])
    r0 = torch.where(valid, r0, 0)
    r1 = torch.where(valid, r1, 0)
    blocks = torch.stack([g, r0, r1]).to(torch.int32).contiguous()
    return order.to(torch.int32), blocks


_PAD = 128  # h columns are zero from a group's kept count up to the next multiple of this
#: optional fast paths, switched off (with one log line) if they fail to build on this machine
_FAST = {"gemv": True, "compact": True}


def _fast_failed(name: str, exc: Exception) -> None:
    _FAST[name] = False
    _say_once(f"masked FFN: the {name} Triton path failed ({type(exc).__name__}: {str(exc)[:200]}); "
              "using the general kernels instead")


def launch_grouped(x, w_gate, w_up, w_down, order, blocks, idx, counts, act_code, cfg, *, a=None, token_mask=None,
                   thr=None, stages=("gate_up", "down"), split=None, tune=False) -> torch.Tensor:
    """Run the two grouped kernels on a schedule; ``stages`` may leave one out (profiling); ``tune``:
    the autotuned tile shapes (row blocks of 64 or more) instead of ``cfg``'s."""
    d_model = x.shape[1]
    d_ff = idx.shape[1]
    n_blocks = blocks.shape[1]
    ieee = x.dtype == torch.float32
    bm = cfg["BM"]
    tune = tune and bm >= 64 and not _INTERPRET
    width = -(-d_ff // _PAD) * _PAD  # the gate/up grid covers this many columns of h
    # (under Triton's interpreter h starts as NaN, so that a read of an unwritten column shows)
    h = (torch.full if _INTERPRET else lambda shape, _, **kw: torch.empty(shape, **kw))(
        (order.numel(), width), float("nan"), device=x.device, dtype=x.dtype)
    mask_mode = 1 if token_mask is not None else (2 if a is not None and thr is not None else 0)
    if "gate_up" in stages:
        args = (x, order, blocks, n_blocks, idx, counts, w_gate, w_up,
                a if a is not None else x, token_mask if token_mask is not None else x, h, float(thr or 0.0),
                d_model, width, x.stride(0), idx.stride(0), w_gate.stride(0), w_up.stride(0),
                a.stride(0) if a is not None else 0, token_mask.stride(0) if token_mask is not None else 0, h.stride(0))
        flags = dict(ACT=act_code, HAS_A=a is not None, MASK_MODE=mask_mode, IEEE=ieee, BM=bm, GROUP_M=8, PAD=_PAD)
        if tune:
            _tk.gate_up_tuned[lambda meta: (n_blocks * triton.cdiv(width, meta["BN"]),)](*args, **flags)
        else:
            _tk.gate_up_kernel[(n_blocks * triton.cdiv(width, cfg["BN1"]),)](
                *args, **flags, BN=cfg["BN1"], BK=cfg["BK1"], num_warps=cfg["W1"], num_stages=cfg["S1"])
    if "down" not in stages:
        return h
    # split the kept list over programs when the row blocks alone cannot fill the device
    if split is None:
        split = 1
        if x.is_cuda and order.numel() <= 64:
            want = -(-2 * _sms(x.device) // (n_blocks * triton.cdiv(d_model, cfg["BN2"])))
            split = min(8, 1 << max(0, (want - 1).bit_length()))
    if split > 1:
        y = torch.zeros((x.shape[0], d_model), device=x.device, dtype=torch.float32)
    else:
        y = torch.empty((x.shape[0], d_model), device=x.device, dtype=x.dtype)
    args = (h, order, blocks, n_blocks, idx, counts, w_down, y, d_model,
            h.stride(0), idx.stride(0), w_down.stride(0), w_down.stride(1), y.stride(0))
    flags = dict(SPLIT=split, IEEE=ieee, BM=bm, GROUP_M=8)
    if tune and split == 1:
        _tk.down_tuned[lambda meta: (n_blocks * triton.cdiv(d_model, meta["BN"]), 1)](*args, **flags)
    else:
        _tk.down_kernel[(n_blocks * triton.cdiv(d_model, cfg["BN2"]), split)](
            *args, **flags, BN=cfg["BN2"], BK=cfg["BK2"], num_warps=cfg["W2"], num_stages=cfg["S2"])
    return y.to(x.dtype) if split > 1 else y


_GEMV = dict(BN=4, BK=512, W1=4, BJ=16, BD=512, W2=4)


def _sms(device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def launch_gemv(x, w_gate, w_up, w_down, sel, idx, counts, act_code, *, a=None, token_mask=None, thr=None,
                 stages=("gate_up", "down")) -> torch.Tensor:
    """One token (``x (1, d_model)``) on the neurons of group ``sel[0]`` of ``idx``/``counts``."""
    d_model = x.shape[1]
    d_ff = idx.shape[1]
    c = _GEMV
    h = torch.empty(d_ff, device=x.device, dtype=x.dtype)
    mask_mode = 1 if token_mask is not None else (2 if a is not None and thr is not None else 0)
    if "gate_up" in stages:
        _tk.gemv_gate_up_kernel[(triton.cdiv(d_ff, c["BN"]),)](
            x, sel, idx, counts, w_gate, w_up, a if a is not None else x,
            token_mask if token_mask is not None else x, h, float(thr or 0.0), d_model,
            idx.stride(0), w_gate.stride(0), w_up.stride(0),
            ACT=act_code, HAS_A=a is not None, MASK_MODE=mask_mode, BN=c["BN"], BK=c["BK"], num_warps=c["W1"])
    if "down" not in stages:
        return h
    n_d = triton.cdiv(d_model, c["BD"])
    want = max(1, min(triton.cdiv(d_ff, c["BJ"]), 4 * _sms(x.device) // n_d))
    split = min(64, 1 << max(0, want.bit_length() - 1))
    y = torch.zeros((1, d_model), device=x.device, dtype=torch.float32) if split > 1 else \
        torch.empty((1, d_model), device=x.device, dtype=x.dtype)
    _tk.gemv_down_kernel[(n_d, split)](h, sel, idx, counts, w_down, y, d_model, idx.stride(0), w_down.stride(0),
                                       w_down.stride(1), SPLIT=split, BJ=c["BJ"], BD=c["BD"], num_warps=c["W2"])
    return y.to(x.dtype) if split > 1 else y


_ZERO: dict = {}


def zero_selection(device) -> torch.Tensor:
    """The one-group selection ``(1,) int64`` zero on ``device`` (cached), for a single union of neurons."""
    if str(device) not in _ZERO:
        _ZERO[str(device)] = torch.zeros(1, dtype=torch.int64, device=device)
    return _ZERO[str(device)]


def union_index(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``keep (T, d_ff) bool`` -> the union's kept ids first in ``idx (1, d_ff) int32`` (entries past
    the count are unspecified) and ``counts (1,) int32``."""
    union = keep[0] if keep.shape[0] == 1 else keep.any(dim=0)
    d_ff = union.numel()
    if _FAST["compact"] and _tk is not None and (union.is_cuda or _INTERPRET):
        try:
            idx = torch.empty((1, d_ff), dtype=torch.int32, device=union.device)
            counts = torch.empty(1, dtype=torch.int32, device=union.device)
            block = max(16, triton.next_power_of_2(d_ff))
            _tk.compact_kernel[(1,)](union.contiguous().view(torch.uint8), d_ff, idx, counts, BLOCK=block,
                                     num_warps=16 if block >= 8192 else 4)
            return idx, counts
        except Exception as exc:  # pragma: no cover - depends on the machine
            _fast_failed("compact", exc)
    idx = torch.argsort((~union).to(torch.int8), stable=True).to(torch.int32).view(1, -1)
    return idx, union.sum(dtype=torch.int32).view(1)


def _run_union(x, w_gate, w_up, w_down, idx, counts, act_code, **kw) -> torch.Tensor:
    """The union path (per-token and CATS): GEMV kernels for one token, grouped kernels otherwise."""
    if x.shape[0] == 1 and _FAST["gemv"]:
        try:
            tm = kw.get("token_mask")
            return launch_gemv(x, w_gate, w_up, w_down, zero_selection(x.device), idx, counts, act_code,
                                a=kw.get("a"), token_mask=None if tm is None else tm[0], thr=kw.get("thr"))
        except Exception as exc:  # pragma: no cover - depends on the machine
            _fast_failed("gemv", exc)
    cfg = kernel_config(x.shape[0], x.dtype)
    order, blocks = single_schedule(x.shape[0], cfg["BM"], x.device)
    return launch_grouped(x, w_gate, w_up, w_down, order, blocks, idx, counts, act_code, cfg, tune=True, **kw)


# ----------------------------------------------------------------------------- public kernels


def per_token_ffn(x, w_gate, w_up, w_down, mask, act="silu", backend="auto") -> torch.Tensor:
    """Per-token masked FFN (decode): ``mask (T, d_ff) bool`` -> ``(T, d_model)``.

    Runs the rows of the union of the ``T`` masks, then zeroes each token's own dropped neurons, so
    the result equals :func:`masked_dense_ffn` token by token.
    """
    _, d_ff = _check_weights(x, w_gate, w_up, w_down)
    _check_mask(mask, x.shape[0], d_ff, x.device)
    if x.shape[0] == 0:
        return torch.zeros_like(x)
    if use_triton(x, act, backend, "per_token"):
        idx, counts = union_index(mask)
        tm = mask.contiguous().view(torch.uint8)
        return _run_union(x, w_gate, w_up, w_down, idx, counts, _act_code(act), token_mask=tm)
    idx = mask.any(dim=0).nonzero().squeeze(1)
    return _fb_rows(x, w_gate, w_up, w_down, idx, _act_fn(act), mask.index_select(1, idx))


def grouped_ffn(x, w_gate, w_up, w_down, ids, groups, act="silu", backend="auto", check_ids=True) -> torch.Tensor:
    """Cluster-grouped masked FFN (prefill): token ``t`` runs the neurons of group ``ids[t]``.

    ``ids (T,) int64`` in ``[0, K)``; ``groups``: masks ``(K, d_ff) bool`` or a :class:`GroupIndex`
    (build it once per mask set).  Equals :func:`masked_dense_ffn` with ``mask = masks[ids]``.
    ``check_ids=False`` skips the range check of ``ids`` (a device sync on CUDA; skipped anyway while
    a CUDA graph is captured); out-of-range ids then give undefined results.
    """
    _, d_ff = _check_weights(x, w_gate, w_up, w_down)
    gi = groups if isinstance(groups, GroupIndex) else group_index(groups)
    if gi.width != d_ff:
        raise ValueError(f"group masks have width {gi.width}, the FFN has d_ff = {d_ff}")
    if gi.idx.device != x.device:
        raise ValueError(f"group masks are on {gi.idx.device}, x on {x.device}")
    if ids.dim() != 1 or ids.shape[0] != x.shape[0] or ids.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"ids must be an int64 tensor of shape ({x.shape[0]},), got {ids.dtype} {tuple(ids.shape)}")
    ids = ids.to(device=x.device, dtype=torch.int64)
    if x.shape[0] == 0:
        return torch.zeros_like(x)
    if check_ids and not (x.is_cuda and torch.cuda.is_current_stream_capturing()):
        lo, hi = (int(v) for v in torch.aminmax(ids))
        if lo < 0 or hi >= gi.n_groups:
            raise ValueError(f"ids must lie in [0, {gi.n_groups}), got [{lo}, {hi}]")
    if use_triton(x, act, backend, "grouped"):
        if x.shape[0] == 1 and _FAST["gemv"]:
            try:
                return launch_gemv(x, w_gate, w_up, w_down, ids, gi.idx, gi.counts, _act_code(act))
            except Exception as exc:  # pragma: no cover - depends on the machine
                _fast_failed("gemv", exc)
        cfg = kernel_config(x.shape[0] / min(gi.n_groups, x.shape[0]), x.dtype)
        order, blocks = group_schedule(ids, gi.n_groups, cfg["BM"])
        return launch_grouped(x, w_gate, w_up, w_down, order, blocks, gi.idx, gi.counts, _act_code(act), cfg, tune=True)
    return _fb_grouped(x, w_gate, w_up, w_down, ids, gi, _act_fn(act))


def cats_ffn(x, w_gate, w_up, w_down, threshold: float, act="silu", backend="auto") -> torch.Tensor:
    """CATS FFN: ``W_gate`` dense, ``W_up``/``W_down`` on the neurons with ``|act(gate)| >= threshold``
    (per token, the union over the batch is read).  ``x (T, d_model)`` -> ``(T, d_model)``."""
    _, d_ff = _check_weights(x, w_gate, w_up, w_down)
    threshold = float(threshold)
    if not threshold >= 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    fn = _act_fn(act)
    a = fn(F.linear(x, w_gate))
    if x.shape[0] == 0:
        return torch.zeros_like(x)
    keep = cats_keep(a, threshold)
    if use_triton(x, act, backend, "gate"):
        idx, counts = union_index(keep)
        return _run_union(x, w_gate, w_up, w_down, idx, counts, _act_code(act), a=a, thr=threshold)
    idx = keep.any(dim=0).nonzero().squeeze(1)
    h = a.index_select(1, idx) * F.linear(x, w_up.index_select(0, idx))
    h = h.masked_fill(~keep.index_select(1, idx), 0)
    return h @ down_rows(w_down, idx)


def cats_mask(x, w_gate, threshold: float, act="silu") -> torch.Tensor:
    """The CATS mask ``|act(x W_gate^T)| >= threshold`` (compared in float32): ``(T, d_ff) bool``."""
    return cats_keep(_act_fn(act)(F.linear(x, w_gate)), float(threshold))


def cats_keep(a: torch.Tensor, threshold: float) -> torch.Tensor:
    """CATS's kept neurons: ``a (T, d_ff)`` activated gate outputs -> ``(T, d_ff) bool`` where ``|a| >= threshold``."""
    # float32 comparison, as in the kernels: a bf16 comparison would round the threshold first
    return a.abs().float() >= threshold
