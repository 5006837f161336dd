"""Kernels that read bit-packed patterns directly (Triton on CUDA, torch elsewhere).

Packed rows are ``uint8 (m, ceil(width/8))`` in ``numpy.packbits`` order (most
significant bit first).  Two operations:

* :func:`unpack_operand` -- bits to a padded one-byte matrix operand
  (``0x38`` = e4m3 1.0 for fp8, ``0x01`` for int8) plus exact row sums, in one
  pass: no bool or float intermediate of the chunk is written.
* :func:`segment_bit_sums` -- per-cluster sums of member bits, ``sums[k] +=
  sum of rows with idx == k``, from the packed bytes: rows are visited in
  cluster order, one program per (cluster, column block); each nibble becomes
  4 one-byte lanes of a 32-bit word, so one add counts 4 columns, and the
  lanes are emptied into int32 counts at least every 255 rows.  Each entry of
  ``sums`` is written by one program: no atomics, integer arithmetic.

Triton is imported lazily and used only for CUDA tensors; the torch versions
compute the same outputs (and are what the CPU tests exercise).
"""

from __future__ import annotations

import functools

import torch

from ..extraction.patterns import packed_width, unpack_torch

__all__ = ["FP8_ONE", "INT8_ONE", "byte_table", "triton_available", "unpack_operand", "segment_bit_sums",
           "top_n_rows"]

#: Byte pattern of 1.0 in float8 e4m3 (``torch.tensor(1.0).to(torch.float8_e4m3fn).view(torch.uint8)``).
FP8_ONE = 0x38
#: Byte pattern of 1 in int8.
INT8_ONE = 0x01
#: Triton tiles: (rows, packed bytes) per program of the unpacking kernel; (rows per step, packed
#: bytes) per program of the member-sum kernel.
UNPACK_TILE = (1, 1024)
SEGMENT_TILE = (4, 128)
#: Widest row the one-program-per-row top-n kernel holds in registers.
TOP_N_MAX_WIDTH = 16384


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when Triton imports and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # pragma: no cover - depends on the machine
        return False
    return True


def byte_table(one: int, device: torch.device) -> torch.Tensor:
    """``(256,)`` int64: entry ``b`` holds the 8 bits of byte ``b`` spread over 8 byte lanes.

    Lane ``j`` (bits ``8j .. 8j+7``, i.e. byte ``j`` in little-endian memory
    order) is ``one`` if bit ``7 - j`` of ``b`` is set (``numpy.packbits``
    order, column ``8 * byte + j``), else 0.  Written to memory, an entry is
    the unpacked operand of 8 columns; with ``one = 1`` sums of up to 255
    entries hold 8 exact column counts.
    """
    key = (one, str(device))
    table = _TABLES.get(key)
    if table is None:
        bits = (torch.arange(256)[:, None] >> torch.arange(7, -1, -1)[None, :]) & 1  # (256, 8), MSB first
        table = (bits * one * (256 ** torch.arange(8))[None, :]).sum(dim=1).to(device)
        _TABLES[key] = table
    return table


_TABLES: dict = {}


@functools.lru_cache(maxsize=None)
def _triton_kernels():
    import triton

    from . import triton_kernels as tk

    return triton, tk.unpack_kernel, tk.cluster_sum_kernel, tk.top_n_kernel


def _last_byte_mask(width: int) -> int:
    """Mask of the bits of the last packed byte that belong to the row (padding bits cleared)."""
    return (0xFF << (packed_width(width) * 8 - width)) & 0xFF


def unpack_operand(
    packed: torch.Tensor, width: int, rows: int, cols: int, one: int, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack ``packed: (m, ceil(width/8)) uint8`` into a zero-padded ``(rows, cols)`` uint8 matrix.

    Each set bit becomes the byte ``one`` (:data:`FP8_ONE` or :data:`INT8_ONE`),
    every other entry (clear bits, padding rows ``>= m`` and columns
    ``>= width``) is 0; view the result as ``float8_e4m3fn`` or ``int8``.
    Returns ``(operand (rows, cols) uint8, row sums (m,) int32)``.  ``out``
    (``(>= rows, cols)`` uint8) is reused if given.
    """
    m = packed.shape[0]
    if packed.shape[-1] != packed_width(width):
        raise ValueError(f"packed rows have {packed.shape[-1]} bytes, expected {packed_width(width)} for width {width}")
    if rows < m or cols < width:
        raise ValueError(f"operand ({rows}, {cols}) is smaller than the data ({m}, {width})")
    if out is None:
        out = torch.empty((rows, cols), dtype=torch.uint8, device=packed.device)
    else:
        out = out[:rows]
    if cols % 8:
        raise ValueError(f"operand columns must be a multiple of 8, got {cols}")
    pw = packed.shape[1]
    if packed.is_cuda and triton_available():
        triton, unpack_kernel, _, _ = _triton_kernels()
        rowsum = torch.empty(m, dtype=torch.int32, device=packed.device)
        br, nb = UNPACK_TILE
        unpack_kernel[(triton.cdiv(rows, br),)](packed.contiguous(), byte_table(one, packed.device), out.view(torch.int64),
                                                rowsum, m, rows, pw, cols // 8, _last_byte_mask(width),
                                                BR=br, NB=nb, num_warps=4)
        return out, rowsum
    b = packed.long()
    if m:
        b[:, -1] &= _last_byte_mask(width)
    out.zero_()
    out.view(torch.int64)[:m, :pw] = byte_table(one, packed.device)[b]
    rowsum = _POPCOUNT.to(packed.device)[b].sum(dim=1, dtype=torch.int32)
    return out, rowsum


_POPCOUNT = ((torch.arange(256)[:, None] >> torch.arange(8)[None, :]) & 1).sum(dim=1)


def segment_bit_sums(packed: torch.Tensor, idx: torch.Tensor, sums: torch.Tensor) -> None:
    """``sums[k] += sum of the unpacked rows i of packed with idx[i] == k``, in place.

    ``packed: (m, ceil(width/8)) uint8``, ``idx: (m,)`` int64 in ``[0, K)``,
    ``sums: (K, width)`` int32 (or int64/float on the torch path), contiguous.
    Exact; counts per entry must stay below 2**31.
    """
    m = packed.shape[0]
    k, width = sums.shape
    if packed.shape[-1] != packed_width(width):
        raise ValueError(f"packed rows have {packed.shape[-1]} bytes, expected {packed_width(width)} for width {width}")
    if idx.shape != (m,):
        raise ValueError(f"idx has shape {tuple(idx.shape)}, expected ({m},)")
    if m == 0:
        return
    ids, order = torch.sort(idx.to(torch.int32))  # any order within a cluster gives the same integer sums
    if packed.is_cuda and triton_available() and sums.dtype == torch.int32 and sums.is_contiguous():
        triton, _, cluster_sum_kernel, _ = _triton_kernels()
        bounds = torch.searchsorted(ids, torch.arange(k + 1, device=ids.device, dtype=ids.dtype))
        rb, nb = SEGMENT_TILE
        cluster_sum_kernel[(k, triton.cdiv(packed.shape[1], nb))](
            packed.contiguous(), order, bounds, sums, packed.shape[1], width, _last_byte_mask(width),
            RB=rb, NB=nb, num_warps=2)
        return
    block = max(1, (16 << 20) // max(1, width))
    for s in range(0, m, block):
        rows = order[s : s + block]
        bits = unpack_torch(packed.index_select(0, rows), width, sums.dtype)
        sums.index_add_(0, ids[s : s + block].long(), bits)


def top_n_rows(score: torch.Tensor, n_keep: int) -> torch.Tensor | None:
    """Triton top-n mask of integer ``score: (K, width)`` on CUDA (ties -> lowest position).

    Each row's threshold on the unique keys ``score * width + (width - 1 -
    position)`` is found by bisection inside one program.  Returns ``(K,
    width)`` bool, or None where this kernel does not apply (CPU, no Triton,
    rows wider than :data:`TOP_N_MAX_WIDTH`); the caller then takes the torch
    route.  ``|score|`` must be below ``2**61 / width``.
    """
    k, width = score.shape
    if not (score.is_cuda and triton_available() and width <= TOP_N_MAX_WIDTH and k > 0):
        return None
    triton, _, _, top_n_kernel = _triton_kernels()
    out = torch.empty((k, width), dtype=torch.bool, device=score.device)
    block = triton.next_power_of_2(width)
    top_n_kernel[(k,)](score.contiguous(), out.view(torch.int8), width, int(n_keep), BLOCK=block,
                       num_warps=max(4, min(16, block // 1024)))
    return out
