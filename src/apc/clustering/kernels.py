"""Kernels that read bit-packed patterns directly (Triton on CUDA, torch elsewhere).

Packed rows are ``uint8 (m, ceil(width/8))`` in ``numpy.packbits`` order (most
significant bit first).  Two operations:

* :func:`unpack_operand` -- bits to a padded one-byte matrix operand
  (``0x38`` = e4m3 1.0 for fp8, ``0x01`` for int8) plus exact row sums, in one
  pass: no bool or float intermediate of the chunk is written.
* :func:`segment_bit_sums` -- per-cluster sums of member bits, ``sums[k] +=
  sum of rows with idx == k``, from the packed bytes (rows visited in cluster
  order, one int32 accumulator per column block, flushed by atomic adds when
  the cluster changes).  Integer arithmetic, so the result does not depend on
  the order of the atomic adds.

Triton is imported lazily and used only for CUDA tensors; the torch versions
compute the same outputs (and are what the CPU tests exercise).
"""

from __future__ import annotations

import functools

import torch

from ..patterns import packed_width, unpack_torch

__all__ = ["FP8_ONE", "INT8_ONE", "triton_available", "unpack_operand", "segment_bit_sums"]

#: Byte pattern of 1.0 in float8 e4m3 (``torch.tensor(1.0).to(torch.float8_e4m3fn).view(torch.uint8)``).
FP8_ONE = 0x38
#: Byte pattern of 1 in int8.
INT8_ONE = 0x01


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


@functools.lru_cache(maxsize=None)
def _triton_kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def unpack_kernel(packed_ptr, out_ptr, rowsum_ptr, m, out_rows, pw, width, out_cols,
                      ONE: tl.constexpr, BR: tl.constexpr, NB: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid * BR + tl.arange(0, BR)
        rows64 = rows.to(tl.int64)
        in_rows = rows < m
        out_ok = rows < out_rows
        j = tl.arange(0, 8)
        shift = 7 - j
        total = tl.zeros([BR], dtype=tl.int32)
        n_bytes = (out_cols + 7) // 8
        for b0 in range(0, n_bytes, NB):
            byte = b0 + tl.arange(0, NB)
            b = tl.load(packed_ptr + rows64[:, None] * pw + byte[None, :],
                        mask=in_rows[:, None] & (byte < pw)[None, :], other=0)
            bits = (b.to(tl.int32)[:, :, None] >> shift[None, None, :]) & 1
            cols = byte[None, :, None] * 8 + j[None, None, :]
            bits = tl.where(cols < width, bits, 0)
            total += tl.sum(tl.sum(bits, axis=2), axis=1)
            tl.store(out_ptr + rows64[:, None, None] * out_cols + cols, (bits * ONE).to(tl.uint8),
                     mask=out_ok[:, None, None] & (cols < out_cols))
        tl.store(rowsum_ptr + rows, total, mask=in_rows)

    @triton.jit
    def segment_kernel(packed_ptr, order_ptr, ids_ptr, sums_ptr, n, pw, width,
                       R: tl.constexpr, RB: tl.constexpr, NB: tl.constexpr):
        pid_r = tl.program_id(0)
        pid_c = tl.program_id(1)
        byte = pid_c * NB + tl.arange(0, NB)
        j = tl.arange(0, 8)
        cols = byte[:, None] * 8 + j[None, :]
        cmask = cols < width
        bmask = byte < pw
        shift = 7 - j
        r0 = pid_r * R
        r1 = tl.minimum(r0 + R, n)
        cur = tl.load(ids_ptr + r0)
        acc = tl.zeros([NB, 8], dtype=tl.int32)
        for t in range(r0, r1, RB):
            rows = t + tl.arange(0, RB)
            rmask = rows < r1
            tids = tl.load(ids_ptr + rows, mask=rmask, other=-1)
            src = tl.load(order_ptr + rows, mask=rmask, other=0)
            b = tl.load(packed_ptr + src[:, None] * pw + byte[None, :], mask=rmask[:, None] & bmask[None, :], other=0)
            bits = (b.to(tl.int32)[:, :, None] >> shift[None, None, :]) & 1
            big = tl.full([RB], 1 << 62, dtype=tl.int64)
            c = tl.min(tl.where(rmask, tids, big), axis=0)
            last = tl.max(tids, axis=0)
            while c <= last:
                sel = (tids == c).to(tl.int32)
                part = tl.sum(bits * sel[:, None, None], axis=0)
                if c != cur:
                    tl.atomic_add(sums_ptr + cur * width + cols, acc, mask=cmask, sem="relaxed")
                    acc = part
                    cur = c
                else:
                    acc = acc + part
                c = tl.min(tl.where(tids > c, tids, big), axis=0)
        tl.atomic_add(sums_ptr + cur * width + cols, acc, mask=cmask, sem="relaxed")

    return triton, unpack_kernel, segment_kernel


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
    if packed.is_cuda and triton_available():
        triton, unpack_kernel, _ = _triton_kernels()
        rowsum = torch.empty(m, dtype=torch.int32, device=packed.device)
        br, nb = 16, 64
        unpack_kernel[(triton.cdiv(rows, br),)](packed.contiguous(), out, rowsum, m, rows, packed.shape[1], width, cols,
                                                ONE=one, BR=br, NB=nb, num_warps=4)
        return out, rowsum
    bits = unpack_torch(packed, width, torch.uint8)
    out.zero_()
    out[:m, :width] = bits
    rowsum = bits.sum(dim=1, dtype=torch.int32)
    if one != 1:
        out.mul_(one)
    return out, rowsum


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
    ids, order = torch.sort(idx, stable=True)
    if packed.is_cuda and triton_available() and sums.dtype == torch.int32 and sums.is_contiguous():
        triton, _, segment_kernel = _triton_kernels()
        r, rb, nb = 256, 16, 64
        grid = (triton.cdiv(m, r), triton.cdiv(packed.shape[1], nb))
        segment_kernel[grid](packed.contiguous(), order, ids, sums, m, packed.shape[1], width,
                             R=r, RB=rb, NB=nb, num_warps=4)
        return
    block = max(1, (16 << 20) // max(1, width))
    for s in range(0, m, block):
        rows = order[s : s + block]
        bits = unpack_torch(packed.index_select(0, rows), width, sums.dtype)
        sums.index_add_(0, ids[s : s + block], bits)
