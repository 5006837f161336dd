"""Triton kernels behind :mod:`apc.clustering.kernels` (imported only when CUDA and Triton are there)."""

import triton
import triton.language as tl


@triton.jit
def unpack_kernel(packed_ptr, table_ptr, out_ptr, rowsum_ptr, m, out_rows, pw, out_words, last_mask,
                  BR: tl.constexpr, NB: tl.constexpr):
    # out viewed as int64 (out_rows, out_words): word w of a row = the 8 columns of byte w
    pid = tl.program_id(0)
    rows = pid * BR + tl.arange(0, BR)
    rows64 = rows.to(tl.int64)
    in_rows = rows < m
    out_ok = rows < out_rows
    total = tl.zeros([BR], dtype=tl.int32)
    for w0 in range(0, out_words, NB):
        words = w0 + tl.arange(0, NB)
        b = tl.load(packed_ptr + rows64[:, None] * pw + words[None, :],
                    mask=in_rows[:, None] & (words < pw)[None, :], other=0).to(tl.int32)
        b = tl.where((words == pw - 1)[None, :], b & last_mask, b)
        v = tl.load(table_ptr + b)
        c = b - ((b >> 1) & 0x55)
        c = (c & 0x33) + ((c >> 2) & 0x33)
        total += tl.sum((c + (c >> 4)) & 0x0F, axis=1)
        tl.store(out_ptr + rows64[:, None] * out_words + words[None, :], v,
                 mask=out_ok[:, None] & (words < out_words)[None, :])
    tl.store(rowsum_ptr + rows, total, mask=in_rows)

@triton.jit
def _spread4(nibble):
    # uint32 nibble (4 bits, most significant = first column) -> 4 byte lanes of 0/1, first column in lane 0
    return ((((nibble * 0x01010101) & 0x01020408) + 0x7F7F7F7F) >> 7) & 0x01010101


@triton.jit
def cluster_sum_kernel(packed_ptr, order_ptr, bounds_ptr, sums_ptr, pw, width, last_mask,
                       RB: tl.constexpr, NB: tl.constexpr):
    # one program per (cluster, column block): sums[k, cols] += column counts of the rows
    # order[bounds[k]:bounds[k + 1]]; each slot (row % RB, byte) of acc0/acc1 holds 4 byte-lane
    # counts, emptied into total every 255 steps so that no lane overflows
    k = tl.program_id(0).to(tl.int64)
    pid_c = tl.program_id(1)
    start = tl.load(bounds_ptr + k)
    end = tl.load(bounds_ptr + k + 1)
    if end > start:
        byte = pid_c * NB + tl.arange(0, NB)
        bmask = byte < pw
        j = tl.arange(0, 4)
        total0 = tl.zeros([NB, 4], dtype=tl.int32)
        total1 = tl.zeros([NB, 4], dtype=tl.int32)
        for g in range(start, end, RB * 255):
            acc0 = tl.zeros([RB, NB], dtype=tl.uint32)
            acc1 = tl.zeros([RB, NB], dtype=tl.uint32)
            for t in range(g, tl.minimum(g + RB * 255, end), RB):
                rows = t + tl.arange(0, RB)
                rmask = rows < end
                src = tl.load(order_ptr + rows, mask=rmask, other=0)
                b = tl.load(packed_ptr + src[:, None] * pw + byte[None, :], mask=rmask[:, None] & bmask[None, :],
                            other=0).to(tl.uint32)
                b = tl.where((byte == pw - 1)[None, :], b & last_mask, b)
                acc0 += _spread4(b >> 4)
                acc1 += _spread4(b & 15)
            total0 += tl.sum(((acc0[:, :, None] >> (8 * j)[None, None, :]) & 0xFF).to(tl.int32), axis=0)
            total1 += tl.sum(((acc1[:, :, None] >> (8 * j)[None, None, :]) & 0xFF).to(tl.int32), axis=0)
        cols0 = byte[:, None] * 8 + j[None, :]
        m0 = cols0 < width
        p0 = sums_ptr + k * width + cols0
        tl.store(p0, tl.load(p0, mask=m0, other=0) + total0, mask=m0)
        m1 = (cols0 + 4) < width
        tl.store(p0 + 4, tl.load(p0 + 4, mask=m1, other=0) + total1, mask=m1)


@triton.jit
def top_n_kernel(score_ptr, out_ptr, width, n_keep, BLOCK: tl.constexpr):
    # one row: the n_keep largest unique keys score * width + (width - 1 - position), by bisection
    row = tl.program_id(0).to(tl.int64)
    pos = tl.arange(0, BLOCK)
    ok = pos < width
    s = tl.load(score_ptr + row * width + pos, mask=ok, other=0).to(tl.int64)
    key = tl.where(ok, s * width + (width - 1 - pos), -1)
    lo = tl.min(tl.where(ok, key, 1 << 62), axis=0)
    hi = tl.max(key, axis=0) + 1
    while hi - lo > 1:  # count(key >= lo) >= n_keep > count(key >= hi)
        mid = lo + (hi - lo) // 2
        if tl.sum(((key >= mid) & ok).to(tl.int32), axis=0) >= n_keep:
            lo = mid
        else:
            hi = mid
    tl.store(out_ptr + row * width + pos, (key >= lo).to(tl.int8), mask=ok)
