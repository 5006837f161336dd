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
def _flush(sums_ptr, cur, width, cols, cmask, acc, j):
    # acc: (RB, NB) int64 byte-lane counts of cluster cur -> int32 column counts, added to sums[cur]
    lanes = tl.sum((acc[:, :, None] >> (8 * j)[None, None, :]) & 0xFF, axis=0).to(tl.int32)
    tl.atomic_add(sums_ptr + cur * width + cols, lanes, mask=cmask, sem="relaxed")

@triton.jit
def segment_kernel(packed_ptr, order_ptr, ids_ptr, table_ptr, sums_ptr, n, pw, width, last_mask,
                   R: tl.constexpr, RB: tl.constexpr, NB: tl.constexpr):
    # rows in cluster order; slot (row % RB, byte) of acc holds 8 byte-lane counts of one cluster,
    # at most R / RB <= 255 rows each, so no lane overflows
    pid_r = tl.program_id(0)
    pid_c = tl.program_id(1)
    byte = pid_c * NB + tl.arange(0, NB)
    bmask = byte < pw
    j = tl.arange(0, 8)
    cols = byte[:, None] * 8 + j[None, :]
    cmask = cols < width
    r0 = pid_r * R
    r1 = tl.minimum(r0 + R, n)
    cur = tl.load(ids_ptr + r0)
    acc = tl.zeros([RB, NB], dtype=tl.int64)
    for t in range(r0, r1, RB):
        rows = t + tl.arange(0, RB)
        rmask = rows < r1
        src = tl.load(order_ptr + rows, mask=rmask, other=0)
        b = tl.load(packed_ptr + src[:, None] * pw + byte[None, :], mask=rmask[:, None] & bmask[None, :],
                    other=0).to(tl.int32)
        b = tl.where((byte == pw - 1)[None, :], b & last_mask, b)
        w = tl.load(table_ptr + b)
        first = tl.load(ids_ptr + t)
        last = tl.load(ids_ptr + tl.minimum(t + RB, r1) - 1)
        if first == last:  # the whole step is one cluster (ids are sorted)
            if first != cur:
                _flush(sums_ptr, cur, width, cols, cmask, acc, j)
                acc = tl.zeros([RB, NB], dtype=tl.int64)
                cur = first
            acc += w
        else:
            tids = tl.load(ids_ptr + rows, mask=rmask, other=-1)
            big = tl.full([RB], 1 << 62, dtype=tl.int64)
            c = first
            while c <= last:
                if c != cur:
                    _flush(sums_ptr, cur, width, cols, cmask, acc, j)
                    acc = tl.zeros([RB, NB], dtype=tl.int64)
                    cur = c
                acc += tl.where((tids == c)[:, None], w, 0)
                c = tl.min(tl.where(tids > c, tids, big), axis=0)
    _flush(sums_ptr, cur, width, cols, cmask, acc, j)

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
