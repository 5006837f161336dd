"""Triton kernels of the registered sparse GEMV operators (imported only where Triton is installed).

* ``in_sparse_tile_kernel`` (TEAL's design, FasterDecoding/TEAL ``kernels/sparse_gemv.py``):
  ``out[t, n] = sum_k keep[t, k] x[t, k] w_t[k, n]`` with ``w_t (K, N)`` row-major (a skipped input
  channel skips one contiguous row) and ``keep = |x[t, k] * scale[k]| > thr`` (``thr`` read from a
  device scalar, so one compiled graph serves every share).  The grid is one program per
  ``ITERS * BM x BN`` tile (split over the input rows; ``ITERS`` row steps unrolled, so their loads are in
  flight together): each program loads its inputs, tests them, loads the kept rows of its tile with the
  dropped rows masked off (no index list, no compaction), reduces its tile in float32 and adds it into
  a float32 workspace ``acc`` with one atomic add per output (skipped when no row of the tile is kept).  The last program of each column
  block to arrive (a per-block arrival counter ``cnt``) copies the block's sums from ``acc`` into ``out``,
  writes zeros back into ``acc`` and resets the counter: ``acc`` and ``cnt`` are zero before and after every
  call, so no clearing launch is needed and a CUDA graph replays the kernel as it is.  ``BT``: 1 for
  one token (a reduction in registers), else 16 (matrix instructions, each token's own keep applied;
  the rows loaded are the union of the tokens').
* ``out_sparse_part_kernel``: ``part[s, t, n] = union[n] * sum_{k in block s} x[t, k] w[n, k]`` with
  ``w (N, K)`` row-major (a dropped output neuron skips its row) and ``union[n]`` the OR over tokens
  of ``mask[t, n % NM]``; float32 partial sums of the ``S`` reduction blocks, summed by the caller.
"""

import triton
import triton.language as tl


@triton.jit
def in_sparse_tile_kernel(x_ptr, w_ptr, s_ptr, thr_ptr, acc_ptr, cnt_ptr, out_ptr, T, K, N, stride_x, stride_w,
                          HAS_SCALE: tl.constexpr, HAS_THR: tl.constexpr, BT: tl.constexpr, BM: tl.constexpr,
                          BN: tl.constexpr, ITERS: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    ns = pid_n * BN + tl.arange(0, BN)
    nmask = ns < N
    if HAS_THR:
        thr = tl.load(thr_ptr).to(tl.float32)
    else:
        thr = -1.0
    ts = tl.arange(0, BT)
    tmask = ts < T
    if BT == 1:
        part = tl.zeros((BN,), dtype=tl.float32)
    else:
        part = tl.zeros((BT, BN), dtype=tl.float32)
    any_kept = 0
    for it in tl.static_range(ITERS):  # ITERS tiles of BM rows, unrolled (their loads independent)
        ks = (pid_k * ITERS + it) * BM + tl.arange(0, BM)
        kmask = ks < K
        if BT == 1:
            xv = tl.load(x_ptr + ks, mask=kmask, other=0.0, eviction_policy="evict_last").to(tl.float32)
            sc = xv
            if HAS_SCALE:
                sc = xv * tl.load(s_ptr + ks, mask=kmask, other=0.0, eviction_policy="evict_last").to(tl.float32)
            keep = (tl.abs(sc) > thr) & kmask
            w = tl.load(w_ptr + ks[:, None].to(tl.int64) * stride_w + ns[None, :],
                        mask=keep[:, None] & nmask[None, :], other=0.0, eviction_policy="evict_first")
            part += tl.sum(w.to(tl.float32) * tl.where(keep, xv, 0.0)[:, None], axis=0)
            any_kept += tl.max(keep.to(tl.int32), axis=0)
        else:
            xt = tl.load(x_ptr + ts[:, None] * stride_x + ks[None, :], mask=tmask[:, None] & kmask[None, :],
                         other=0.0, eviction_policy="evict_last").to(tl.float32)
            st = xt
            if HAS_SCALE:
                st = xt * tl.load(s_ptr + ks, mask=kmask, other=0.0,
                                  eviction_policy="evict_last").to(tl.float32)[None, :]
            kt = (tl.abs(st) > thr) & tmask[:, None] & kmask[None, :]
            union = tl.max(kt.to(tl.int32), axis=0) > 0
            w = tl.load(w_ptr + ks[:, None].to(tl.int64) * stride_w + ns[None, :],
                        mask=union[:, None] & nmask[None, :], other=0.0, eviction_policy="evict_first")
            part = tl.dot(tl.where(kt, xt, 0.0).to(w.dtype), w, part, out_dtype=tl.float32)
            any_kept += tl.max(union.to(tl.int32), axis=0)
    if any_kept > 0:
        if BT == 1:
            tl.atomic_add(acc_ptr + ns, part, mask=nmask, sem="relaxed")
        else:
            tl.atomic_add(acc_ptr + ts[:, None] * N + ns[None, :], part, mask=tmask[:, None] & nmask[None, :],
                          sem="relaxed")
    # every thread's adds are done before the arrival is counted (the release orders them for the last program)
    tl.debug_barrier()
    arrived = tl.atomic_add(cnt_ptr + pid_n, 1, sem="acq_rel")
    if arrived == tl.num_programs(1) - 1:
        # all others have arrived: their sums are in L2 (read past L1), and this program alone touches the block now
        if BT == 1:
            tot = tl.load(acc_ptr + ns, mask=nmask, other=0.0, cache_modifier=".cg")
            tl.store(out_ptr + ns, tot, mask=nmask)
            tl.store(acc_ptr + ns, tl.zeros((BN,), dtype=tl.float32), mask=nmask)
        else:
            om = tmask[:, None] & nmask[None, :]
            at = ts[:, None] * N + ns[None, :]
            tot = tl.load(acc_ptr + at, mask=om, other=0.0, cache_modifier=".cg")
            tl.store(out_ptr + at, tot, mask=om)
            tl.store(acc_ptr + at, tl.zeros((BT, BN), dtype=tl.float32), mask=om)
        tl.store(cnt_ptr + pid_n, 0)


@triton.jit
def out_sparse_part_kernel(x_ptr, w_ptr, m_ptr, part_ptr, T, K, N, NM, stride_x, stride_w, stride_m, stride_ps,
                           stride_pt, BT: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    ns = pid_n * BN + tl.arange(0, BN)
    nmask = ns < N
    ts = tl.arange(0, BT)
    tmask = ts < T
    m = tl.load(m_ptr + ts[:, None] * stride_m + (ns % NM)[None, :], mask=tmask[:, None] & nmask[None, :], other=0)
    union = (tl.max(m.to(tl.int32), axis=0) > 0) & nmask
    ks = pid_s * BK + tl.arange(0, BK)
    kmask = ks < K
    w = tl.load(w_ptr + ns[:, None].to(tl.int64) * stride_w + ks[None, :], mask=union[:, None] & kmask[None, :],
                other=0.0, eviction_policy="evict_first")
    if BT == 1:
        xv = tl.load(x_ptr + ks, mask=kmask, other=0.0)
        part = tl.sum(w.to(tl.float32) * xv.to(tl.float32)[None, :], axis=1)
        tl.store(part_ptr + pid_s * stride_ps + ns, part, mask=nmask)
    else:
        xt = tl.load(x_ptr + ts[:, None] * stride_x + ks[None, :], mask=tmask[:, None] & kmask[None, :], other=0.0)
        part = tl.dot(xt.to(w.dtype), tl.trans(w), out_dtype=tl.float32)
        tl.store(part_ptr + pid_s * stride_ps + ts[:, None] * stride_pt + ns[None, :], part,
                 mask=tmask[:, None] & nmask[None, :])
