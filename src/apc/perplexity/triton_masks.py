"""Triton kernels behind :mod:`apc.perplexity.fused` (imported only where Triton is there)."""

import triton
import triton.language as tl


@triton.jit
def mask_kernel(x_ptr, out_ptr, keep_ptr, keep_out_ptr, cent_ptr, ids_ptr, acc_ptr,
                n_rows, width, x_stride, seq, t_pat, t_keep,
                N_IDS: tl.constexpr, KIND: tl.constexpr, AND_P: tl.constexpr, STORE_KEEP: tl.constexpr,
                BR: tl.constexpr, BW: tl.constexpr):
    # one (BR rows, BW columns) tile: keep from KIND, out = x where keep else 0, and the tile's
    # (kept, active) counts over the counted rows added to acc (float64, exact below 2**53)
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BW + tl.arange(0, BW)
    rmask = rows < n_rows
    m2 = rmask[:, None] & (cols < width)[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * x_stride + cols[None, :], mask=m2, other=0)
    a = tl.abs(x.to(tl.float32))
    p = a >= t_pat
    if KIND == 0:  # the pattern itself
        keep = p
    elif KIND == 1:  # a second magnitude threshold
        keep = a >= t_keep
    elif KIND == 2:  # a given (n_rows, width) one-byte mask
        keep = tl.load(keep_ptr + rows64[:, None] * width + cols[None, :], mask=m2, other=0) != 0
    else:  # the union of the centroids ids[row, :N_IDS] (one-byte (K, width) rows)
        keep = tl.zeros([BR, BW], dtype=tl.int1)
        for j in tl.static_range(N_IDS):
            cid = tl.load(ids_ptr + rows64 * N_IDS + j, mask=rmask, other=0).to(tl.int64)
            c = tl.load(cent_ptr + cid[:, None] * width + cols[None, :], mask=m2, other=0)
            keep = keep | (c != 0)
    if AND_P:
        keep = keep & p
    if seq > 0:
        first = (rows % seq) == 0
    else:
        first = rows < 0
    counted = m2 & (~first)[:, None]
    keep = keep | first[:, None]
    tl.store(out_ptr + rows64[:, None] * width + cols[None, :], tl.where(keep, x, tl.zeros_like(x)), mask=m2)
    if STORE_KEEP:
        tl.store(keep_out_ptr + rows64[:, None] * width + cols[None, :], keep.to(tl.int8), mask=m2)
    kept = tl.sum(tl.sum((keep & counted).to(tl.int32), axis=1), axis=0)
    active = tl.sum(tl.sum((p & counted).to(tl.int32), axis=1), axis=0)
    tl.atomic_add(acc_ptr, kept.to(tl.float64))
    tl.atomic_add(acc_ptr + 1, active.to(tl.float64))


@triton.jit
def pattern_kernel(x_ptr, out_ptr, n_rows, width, x_stride, out_rows, out_cols, t_pat, one,
                   BR: tl.constexpr, BW: tl.constexpr):
    # the byte ``one`` where |x| >= t_pat, 0 elsewhere and in the padding (rows >= n_rows, cols >= width)
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    cols = tl.program_id(1) * BW + tl.arange(0, BW)
    rows64 = rows.to(tl.int64)
    inside = (rows < n_rows)[:, None] & (cols < width)[None, :]
    x = tl.load(x_ptr + rows64[:, None] * x_stride + cols[None, :], mask=inside, other=0)
    v = tl.where(inside & (tl.abs(x.to(tl.float32)) >= t_pat), one, 0).to(tl.uint8)
    tl.store(out_ptr + rows64[:, None] * out_cols + cols[None, :], v,
             mask=(rows < out_rows)[:, None] & (cols < out_cols)[None, :])


@triton.jit
def top_n_float_kernel(score_ptr, out_ptr, n_rows, width, score_stride, n_keep,
                       ROWS: tl.constexpr, BLOCK: tl.constexpr):
    # ROWS rows of float32 scores: the n_keep largest of each, ties at the n-th value from the lowest
    # positions; -0.0 counts as +0.0 and NaN above everything (the order of a stable descending sort)
    rows = (tl.program_id(0) * ROWS + tl.arange(0, ROWS)).to(tl.int64)
    pos = tl.arange(0, BLOCK)
    ok = (rows < n_rows)[:, None] & (pos < width)[None, :]
    s = tl.load(score_ptr + rows[:, None] * score_stride + pos[None, :], mask=ok, other=0.0)
    s = tl.where(s == 0.0, 0.0, s)
    bits = s.to(tl.int32, bitcast=True)
    key = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)  # order-preserving integer key
    key = tl.where(s != s, 0x7FFFFFFF, key)
    key = tl.where(ok, key, -0x80000000)  # below every real key: never counted
    lo = tl.min(tl.where(ok, key, 0x7FFFFFFF), axis=1).to(tl.int64)
    hi = tl.max(key, axis=1).to(tl.int64) + 1
    for _ in range(33):  # bisection per row: count(key >= lo) >= n_keep > count(key >= hi)
        mid = lo + (hi - lo) // 2
        c = tl.sum((key >= mid.to(tl.int32)[:, None]).to(tl.int32), axis=1)
        big = c >= n_keep
        lo = tl.where(big, mid, lo)
        hi = tl.where(big, hi, mid)
    v = lo.to(tl.int32)[:, None]  # the n-th largest key of each row
    above = key > v
    at = key == v
    need = n_keep - tl.sum(above.to(tl.int32), axis=1)
    keep = above | (at & (tl.cumsum(at.to(tl.int32), axis=1) <= need[:, None]))
    tl.store(out_ptr + rows[:, None] * width + pos[None, :], keep.to(tl.int8), mask=ok)
