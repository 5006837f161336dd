"""Triton kernel of the registered decode attention operator (imported only where Triton is installed).

``decode_attn_kernel``: one query position per row at ``pos`` (a device scalar) against a static KV
cache, grouped-query (each program serves the ``G = nh / nkv`` query heads of one KV head, ``GP`` of
them padded to a power of two), split over the cache length (flash-decoding).  Inputs ``q (B, nh, hd)``
(rotated), the new key and value ``k, v (B, nkv, hd)`` (the key rotated) and the caches ``kc, vc (B,
nkv, L, hd)``.  The split-0 program of each ``(b, kv head)`` writes the new key and value into the
caches at ``pos``; every program takes the new ones from registers at ``pos`` (no program reads a cache
row written in the same launch).  Program ``(b * nkv + h, s)`` covers keys ``[s * CH, (s + 1) * CH) ∩
[0, pos]`` in ``BL``-key steps, each skipped at run time when it starts past ``pos`` (a split past ``pos`` loads
nothing; one step when ``CH <= BL``): scores and the weighted values in float32
(products and sums of the upcast bf16/fp16 inputs, no matrix instructions: ``G`` rows are too few), a
running max and sum (online softmax); it stores its unnormalised output, max and sum into a float32
workspace.  The last program of a ``(b, kv head)`` to arrive (an arrival counter, reset by it) merges the
``NSPLIT`` splits in one load and writes ``o (B, nh, hd)`` in ``q``'s dtype.
"""

import triton
import triton.language as tl


@triton.jit
def decode_attn_kernel(q_ptr, kn_ptr, vn_ptr, kc_ptr, vc_ptr, pos_ptr, part_ptr, ml_ptr, cnt_ptr, o_ptr, NKV, G, L,
                       sm_scale, s_qb, s_qh, s_nb, s_nh, s_cb, s_ch, s_cl, CH: tl.constexpr, GP: tl.constexpr,
                       HD: tl.constexpr, BL: tl.constexpr, NSPLIT: tl.constexpr):
    pid = tl.program_id(0)
    sp = tl.program_id(1)
    b = pid // NKV
    h = pid % NKV
    pos = tl.load(pos_ptr)
    gs = tl.arange(0, GP)
    gmask = gs < G
    ds = tl.arange(0, HD)
    q = tl.load(q_ptr + b * s_qb + (h * G + gs)[:, None] * s_qh + ds[None, :], mask=gmask[:, None],
                other=0.0).to(tl.float32) * sm_scale
    kn = tl.load(kn_ptr + b * s_nb + h * s_nh + ds).to(tl.float32)
    vn = tl.load(vn_ptr + b * s_nb + h * s_nh + ds).to(tl.float32)
    cbase = b.to(tl.int64) * s_cb + h * s_ch
    if sp == 0:
        tl.store(kc_ptr + cbase + pos * s_cl + ds, kn.to(kc_ptr.dtype.element_ty))
        tl.store(vc_ptr + cbase + pos * s_cl + ds, vn.to(vc_ptr.dtype.element_ty))
    m = tl.full((GP,), -1e30, dtype=tl.float32)
    lsum = tl.zeros((GP,), dtype=tl.float32)
    acc = tl.zeros((GP, HD), dtype=tl.float32)
    start = sp * CH
    stop = tl.minimum(tl.minimum(start + CH, pos + 1), L)  # the live keys of this split: none past pos
    for j in tl.static_range(0, CH, BL):
        if start + j < stop:  # a step past pos loads and computes nothing
            ls = start + j + tl.arange(0, BL)
            lmask = ls < stop
            at = ls[:, None] * s_cl + ds[None, :]
            k = tl.load(kc_ptr + cbase + at, mask=lmask[:, None], other=0.0).to(tl.float32)
            v = tl.load(vc_ptr + cbase + at, mask=lmask[:, None], other=0.0).to(tl.float32)
            now = (ls == pos)[:, None]
            k = tl.where(now, kn[None, :], k)
            v = tl.where(now, vn[None, :], v)
            s = tl.sum(q[:, None, :] * k[None, :, :], axis=2)  # (GP, BL)
            s = tl.where(lmask[None, :], s, float("-inf"))
            m_new = tl.maximum(m, tl.max(s, axis=1))
            alpha = tl.exp(m - m_new)
            p = tl.exp(s - m_new[:, None])
            lsum = lsum * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
            m = m_new
    row = pid * NSPLIT + sp
    tl.store(part_ptr + (row * GP + gs)[:, None] * HD + ds[None, :], acc)
    tl.store(ml_ptr + (row * GP + gs) * 2, m)
    tl.store(ml_ptr + (row * GP + gs) * 2 + 1, lsum)
    # every thread's stores are done before the arrival is counted (the release orders them for the last one)
    tl.debug_barrier()
    arrived = tl.atomic_add(cnt_ptr + pid, 1, sem="acq_rel")
    if arrived == NSPLIT - 1:
        rows = pid * NSPLIT + tl.arange(0, NSPLIT)
        sg = rows[:, None] * GP + gs[None, :]  # (NSPLIT, GP)
        ms = tl.load(ml_ptr + sg * 2, cache_modifier=".cg")
        lss = tl.load(ml_ptr + sg * 2 + 1, cache_modifier=".cg")
        mx = tl.max(ms, axis=0)
        wgt = tl.exp(ms - mx[None, :])
        den = tl.sum(wgt * lss, axis=0)
        a = tl.load(part_ptr + sg[:, :, None] * HD + ds[None, None, :], cache_modifier=".cg")  # (NSPLIT, GP, HD)
        out = tl.sum(a * wgt[:, :, None], axis=0) / den[:, None]
        tl.store(o_ptr + b * s_qb + (h * G + gs)[:, None] * s_qh + ds[None, :], out.to(o_ptr.dtype.element_ty),
                 mask=gmask[:, None])
        tl.store(cnt_ptr + pid, 0)
