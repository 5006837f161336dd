"""Triton kernels of the registered sparse GEMV operators (imported only where Triton is installed).

Both write float32 *partial sums* ``part (S, T, N)``, one slice per split of the reduction axis, with
plain stores: no atomics and no zeroed buffer; the caller (or the compiled graph around the
operator) sums the ``S`` slices, fused into whatever reads the result next.

* ``in_sparse_part_kernel``: ``part[s, t, n] = sum_{k in chunk s} keep[t, k] x[t, k] w_t[k, n]``,
  ``w_t (K, N)`` row-major (a skipped input channel skips one contiguous row), ``keep = |x[t, k] *
  scale[k]| > thr`` (``thr`` read from a device scalar, so one compiled graph serves every share).
  Each program covers one chunk of ``CHUNK`` input rows and ``BN`` columns.  ``COMPACT``: the chunk's
  kept rows (the union over the tokens) are listed first, through a small global scratch ``idx
  (K,)`` that every program of the chunk writes with the same values, and only they are loaded,
  ``BK`` at a time (split-K over compacted chunks); otherwise every ``BK``-row step loads its tile with
  the dropped rows masked off (TEAL's masked load).  ``BT``: 1 for one token (a reduction in
  registers), else 16 (matrix instructions, each token's own keep applied).
* ``out_sparse_part_kernel``: ``part[s, t, n] = union[n] * sum_{k in block s} x[t, k] w[n, k]`` with
  ``w (N, K)`` row-major (a dropped output neuron skips its row) and ``union[n]`` the OR over tokens
  of ``mask[t, n % NM]``.
"""

import triton
import triton.language as tl


@triton.jit
def _gathered(acc, j, cnt, k0, idx_ptr, x_ptr, w_ptr, s_ptr, thr, ns, nmask, ts, tmask, stride_x, stride_w,
              HAS_SCALE: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    # kept rows j .. j + BK of the chunk's list: their weight rows gathered, whole
    js = j + tl.arange(0, BK)
    jm = js < cnt
    kk = tl.load(idx_ptr + k0 + js, mask=jm, other=0)
    w = tl.load(w_ptr + kk[:, None].to(tl.int64) * stride_w + ns[None, :], mask=jm[:, None] & nmask[None, :],
                other=0.0, eviction_policy="evict_first")
    if BT == 1:
        xv = tl.load(x_ptr + kk, mask=jm, other=0.0).to(tl.float32)
        acc += tl.sum(w.to(tl.float32) * xv[:, None], axis=0)
    else:
        xt = tl.load(x_ptr + ts[:, None] * stride_x + kk[None, :], mask=tmask[:, None] & jm[None, :],
                     other=0.0).to(tl.float32)
        st = xt
        if HAS_SCALE:
            st = xt * tl.load(s_ptr + kk, mask=jm, other=0.0).to(tl.float32)[None, :]
        xt = tl.where(tl.abs(st) > thr, xt, 0.0)
        acc = tl.dot(xt.to(w.dtype), w, acc, out_dtype=tl.float32)
    return acc


@triton.jit
def in_sparse_part_kernel(x_ptr, w_ptr, s_ptr, thr_ptr, part_ptr, idx_ptr, T, K, N, stride_x, stride_w, stride_ps,
                          stride_pt, HAS_SCALE: tl.constexpr, HAS_THR: tl.constexpr, BT: tl.constexpr,
                          BK: tl.constexpr, BN: tl.constexpr, CHUNK: tl.constexpr, COMPACT: tl.constexpr,
                          DYN: tl.constexpr = True):
    pid_n = tl.program_id(0)
    pid_s = tl.program_id(1)
    ns = pid_n * BN + tl.arange(0, BN)
    nmask = ns < N
    k0 = pid_s * CHUNK
    if HAS_THR:
        thr = tl.load(thr_ptr).to(tl.float32)
    else:
        thr = -1.0
    ts = tl.arange(0, BT)
    tmask = ts < T
    if BT == 1:
        acc = tl.zeros((BN,), dtype=tl.float32)
    else:
        acc = tl.zeros((BT, BN), dtype=tl.float32)
    if COMPACT:
        ks = k0 + tl.arange(0, CHUNK)
        kmask = ks < K
        if BT == 1:
            xc = tl.load(x_ptr + ks, mask=kmask, other=0.0).to(tl.float32)
            sc = xc
            if HAS_SCALE:
                sc = xc * tl.load(s_ptr + ks, mask=kmask, other=0.0).to(tl.float32)
            union = (tl.abs(sc) > thr) & kmask
        else:
            xc = tl.load(x_ptr + ts[:, None] * stride_x + ks[None, :], mask=tmask[:, None] & kmask[None, :],
                         other=0.0).to(tl.float32)
            sc = xc
            if HAS_SCALE:
                sc = xc * tl.load(s_ptr + ks, mask=kmask, other=0.0).to(tl.float32)[None, :]
            kt = (tl.abs(sc) > thr) & tmask[:, None] & kmask[None, :]
            union = tl.max(kt.to(tl.int32), axis=0) > 0
        u = union.to(tl.int32)
        pos = tl.cumsum(u, 0) - 1
        cnt = tl.sum(u, 0)
        # every program of this chunk writes the same list; each reads back only what it wrote
        tl.store(idx_ptr + k0 + pos, ks, mask=union)
        tl.debug_barrier()
        if DYN:
            for j in range(0, cnt, BK):
                acc = _gathered(acc, j, cnt, k0, idx_ptr, x_ptr, w_ptr, s_ptr, thr, ns, nmask, ts, tmask, stride_x,
                                stride_w, HAS_SCALE, BT, BK)
        else:  # Triton's interpreter takes no loop bound computed in the kernel
            for j in range(0, CHUNK, BK):
                acc = _gathered(acc, j, cnt, k0, idx_ptr, x_ptr, w_ptr, s_ptr, thr, ns, nmask, ts, tmask, stride_x,
                                stride_w, HAS_SCALE, BT, BK)
    else:
        for j in range(0, CHUNK, BK):
            ks = k0 + j + tl.arange(0, BK)
            kmask = ks < K
            if BT == 1:
                xv = tl.load(x_ptr + ks, mask=kmask, other=0.0).to(tl.float32)
                sc = xv
                if HAS_SCALE:
                    sc = xv * tl.load(s_ptr + ks, mask=kmask, other=0.0).to(tl.float32)
                keep = (tl.abs(sc) > thr) & kmask
                w = tl.load(w_ptr + ks[:, None].to(tl.int64) * stride_w + ns[None, :],
                            mask=keep[:, None] & nmask[None, :], other=0.0, eviction_policy="evict_first")
                acc += tl.sum(w.to(tl.float32) * tl.where(keep, xv, 0.0)[:, None], axis=0)
            else:
                xt = tl.load(x_ptr + ts[:, None] * stride_x + ks[None, :], mask=tmask[:, None] & kmask[None, :],
                             other=0.0).to(tl.float32)
                st = xt
                if HAS_SCALE:
                    st = xt * tl.load(s_ptr + ks, mask=kmask, other=0.0).to(tl.float32)[None, :]
                kt = (tl.abs(st) > thr) & tmask[:, None] & kmask[None, :]
                union = tl.max(kt.to(tl.int32), axis=0) > 0
                w = tl.load(w_ptr + ks[:, None].to(tl.int64) * stride_w + ns[None, :],
                            mask=union[:, None] & nmask[None, :], other=0.0, eviction_policy="evict_first")
                acc = tl.dot(tl.where(kt, xt, 0.0).to(w.dtype), w, acc, out_dtype=tl.float32)
    if BT == 1:
        tl.store(part_ptr + pid_s * stride_ps + ns, acc, mask=nmask)
    else:
        tl.store(part_ptr + pid_s * stride_ps + ts[:, None] * stride_pt + ns[None, :], acc,
                 mask=tmask[:, None] & nmask[None, :])


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
