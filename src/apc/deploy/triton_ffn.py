"""Triton kernels for the masked gated FFN (imported only where Triton is installed).

Two kernels serve every masked variant.  Both walk a *block schedule*: the tokens sorted by
group, cut into blocks of ``BM`` rows that never straddle two groups, and described by
``blocks (3, B) int32`` = (group, first sorted row, end sorted row); a block with
first == end is idle.  ``order (T,)`` maps sorted rows to token rows of ``x``/``y``.
``idx (G, F) int32`` lists each group's kept neurons first (``counts (G,)`` of them).

* ``gate_up_kernel``: ``h[r, j] = act(x[order[r]] . W_gate[idx[g, j]]) * (x[order[r]] . W_up[idx[g, j]])``
  for ``j < counts[g]``, optionally times a per-token mask (``MASK_MODE`` 1: a bool ``(T, F)``
  mask at ``[token, idx]``; 2: ``|act(gate)| >= thr``), and with ``HAS_A`` the activated gate is
  read from ``a (T, F)`` instead of computed (CATS).  ``h (R, F)`` rows are sorted rows,
  columns are positions in the group's kept list.
  ``h`` has ``NF = ceil(d_ff / 128) * 128`` columns (the grid covers them all) and is zero from
  ``counts[g]`` to the next multiple of 128.
* ``down_kernel``: ``y[order[r], d] = sum_{j < counts[g]} h[r, j] * W_down[d, idx[g, j]]``; with
  ``SPLIT > 1`` the kept list is split over ``SPLIT`` programs that add into a float32 ``y``.
* ``gemv_gate_up_kernel`` / ``gemv_down_kernel``: the same for one token (batch-1 decode), without
  matrix instructions, the group row ``g = sel[0]``; ``h (d_ff,)``.
* ``compact_kernel``: ``keep (d_ff,) uint8`` -> its kept ids first in ``idx`` and their count (one program).

Weights are read by index inside the kernels; no weight row is copied.
"""

import triton
import triton.language as tl


@triton.jit
def _swizzle(pid, n_m, n_n, GROUP_M: tl.constexpr):
    # programs of GROUP_M consecutive row blocks share weight tiles while they run
    width = GROUP_M * n_n
    gid = pid // width
    first_m = gid * GROUP_M
    size_m = tl.minimum(n_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def gate_up_kernel(x_ptr, order_ptr, blocks_ptr, n_blocks, idx_ptr, counts_ptr, wg_ptr, wu_ptr, a_ptr, tm_ptr,
                   h_ptr, thr, D, NF, stride_x, stride_idx, stride_wg, stride_wu, stride_a, stride_tm,
                   stride_h,
                   ACT: tl.constexpr, HAS_A: tl.constexpr, MASK_MODE: tl.constexpr, IEEE: tl.constexpr,
                   BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                   PAD: tl.constexpr = 128):
    pid_m, pid_n = _swizzle(tl.program_id(0), n_blocks, tl.cdiv(NF, BN), GROUP_M)
    g = tl.load(blocks_ptr + pid_m)
    row0 = tl.load(blocks_ptr + n_blocks + pid_m)
    row1 = tl.load(blocks_ptr + 2 * n_blocks + pid_m)
    cnt = tl.load(counts_ptr + g)
    n0 = pid_n * BN
    # programs up to the kept count rounded up to PAD write zeros past it, so that the down kernel
    # reads whole tiles of h without a mask along its contiguous axis
    if (row0 < row1) & (n0 < tl.cdiv(cnt, PAD) * PAD):
        rows = row0 + tl.arange(0, BM)
        rmask = rows < row1
        tok = tl.load(order_ptr + rows, mask=rmask, other=0).to(tl.int64)
        cols = n0 + tl.arange(0, BN)
        cmask = cols < cnt
        neu = tl.load(idx_ptr + g.to(tl.int64) * stride_idx + cols, mask=cmask, other=0).to(tl.int64)
        acc_u = tl.zeros((BM, BN), dtype=tl.float32)
        acc_g = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, D, BK):
            ks = k0 + tl.arange(0, BK)
            kmask = ks < D
            xt = tl.load(x_ptr + tok[:, None] * stride_x + ks[None, :], mask=rmask[:, None] & kmask[None, :],
                         other=0.0)
            wu = tl.load(wu_ptr + neu[None, :] * stride_wu + ks[:, None], mask=cmask[None, :] & kmask[:, None],
                         other=0.0)
            if IEEE:
                acc_u = tl.dot(xt, wu, acc_u, input_precision="ieee")
            else:
                acc_u = tl.dot(xt, wu, acc_u)
            if not HAS_A:
                wg = tl.load(wg_ptr + neu[None, :] * stride_wg + ks[:, None], mask=cmask[None, :] & kmask[:, None],
                             other=0.0)
                if IEEE:
                    acc_g = tl.dot(xt, wg, acc_g, input_precision="ieee")
                else:
                    acc_g = tl.dot(xt, wg, acc_g)
        both = rmask[:, None] & cmask[None, :]
        if HAS_A:
            a = tl.load(a_ptr + tok[:, None] * stride_a + neu[None, :], mask=both, other=0.0).to(tl.float32)
        else:
            # round the gate like a dense product in the input dtype would before the activation
            acc_g = acc_g.to(h_ptr.dtype.element_ty).to(tl.float32)
            if ACT == 0:  # silu
                a = acc_g / (1.0 + tl.exp(-acc_g))
            else:  # relu
                a = tl.maximum(acc_g, 0.0)
            a = a.to(h_ptr.dtype.element_ty).to(tl.float32)
        u = acc_u.to(h_ptr.dtype.element_ty).to(tl.float32)
        h = a * u
        if MASK_MODE == 1:
            m = tl.load(tm_ptr + tok[:, None] * stride_tm + neu[None, :], mask=both, other=0)
            h = tl.where(m != 0, h, 0.0)
        if MASK_MODE == 2:
            h = tl.where(tl.abs(a) >= thr, h, 0.0)
        h = tl.where(cmask[None, :], h, 0.0)
        tl.store(h_ptr + rows[:, None].to(tl.int64) * stride_h + cols[None, :], h.to(h_ptr.dtype.element_ty),
                 mask=rmask[:, None])


@triton.jit
def down_kernel(h_ptr, order_ptr, blocks_ptr, n_blocks, idx_ptr, counts_ptr, wd_ptr, y_ptr, D,
                stride_h, stride_idx, stride_wd_d, stride_wd_f, stride_y,
                SPLIT: tl.constexpr, IEEE: tl.constexpr,
                BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid_m, pid_n = _swizzle(tl.program_id(0), n_blocks, tl.cdiv(D, BN), GROUP_M)
    pid_s = tl.program_id(1)
    g = tl.load(blocks_ptr + pid_m)
    row0 = tl.load(blocks_ptr + n_blocks + pid_m)
    row1 = tl.load(blocks_ptr + 2 * n_blocks + pid_m)
    if row0 < row1:
        cnt = tl.load(counts_ptr + g)
        rows = row0 + tl.arange(0, BM)
        rmask = rows < row1
        tok = tl.load(order_ptr + rows, mask=rmask, other=0).to(tl.int64)
        ds = pid_n * BN + tl.arange(0, BN)
        dmask = ds < D
        per = tl.cdiv(tl.cdiv(cnt, BK), SPLIT) * BK
        j_lo = pid_s * per
        j_hi = tl.minimum(tl.cdiv(cnt, BK) * BK, j_lo + per)
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for j0 in range(j_lo, j_hi, BK):
            js = j0 + tl.arange(0, BK)
            jmask = js < cnt
            neu = tl.load(idx_ptr + g.to(tl.int64) * stride_idx + js, mask=jmask, other=0).to(tl.int64)
            # h is zero past the kept count (gate_up_kernel), so whole tiles are read unmasked along j
            ht = tl.load(h_ptr + rows[:, None].to(tl.int64) * stride_h + js[None, :], mask=rmask[:, None], other=0.0)
            wt = tl.load(wd_ptr + ds[None, :] * stride_wd_d + neu[:, None] * stride_wd_f,
                         mask=jmask[:, None] & dmask[None, :], other=0.0)
            if IEEE:
                acc = tl.dot(ht, wt, acc, input_precision="ieee")
            else:
                acc = tl.dot(ht, wt, acc)
        out = y_ptr + tok[:, None] * stride_y + ds[None, :]
        if SPLIT == 1:
            tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=rmask[:, None] & dmask[None, :])
        else:
            if j_lo < j_hi:
                tl.atomic_add(out, acc, mask=rmask[:, None] & dmask[None, :], sem="relaxed")


@triton.jit
def gemv_gate_up_kernel(x_ptr, sel_ptr, idx_ptr, counts_ptr, wg_ptr, wu_ptr, a_ptr, tm_ptr, h_ptr, thr, D,
                        stride_idx, stride_wg, stride_wu,
                        ACT: tl.constexpr, HAS_A: tl.constexpr, MASK_MODE: tl.constexpr,
                        BN: tl.constexpr, BK: tl.constexpr):
    g = tl.load(sel_ptr).to(tl.int64)
    cnt = tl.load(counts_ptr + g)
    n0 = tl.program_id(0) * BN
    if n0 < cnt:
        cols = n0 + tl.arange(0, BN)
        cmask = cols < cnt
        neu = tl.load(idx_ptr + g * stride_idx + cols, mask=cmask, other=0).to(tl.int64)
        acc_u = tl.zeros((BN, BK), dtype=tl.float32)
        acc_g = tl.zeros((BN, BK), dtype=tl.float32)
        for k0 in range(0, D, BK):
            ks = k0 + tl.arange(0, BK)
            kmask = ks < D
            xv = tl.load(x_ptr + ks, mask=kmask, other=0.0).to(tl.float32)
            wu = tl.load(wu_ptr + neu[:, None] * stride_wu + ks[None, :], mask=cmask[:, None] & kmask[None, :],
                         other=0.0)
            acc_u += wu.to(tl.float32) * xv[None, :]
            if not HAS_A:
                wg = tl.load(wg_ptr + neu[:, None] * stride_wg + ks[None, :], mask=cmask[:, None] & kmask[None, :],
                             other=0.0)
                acc_g += wg.to(tl.float32) * xv[None, :]
        u = tl.sum(acc_u, axis=1).to(h_ptr.dtype.element_ty).to(tl.float32)
        if HAS_A:
            a = tl.load(a_ptr + neu, mask=cmask, other=0.0).to(tl.float32)
        else:
            gate = tl.sum(acc_g, axis=1).to(h_ptr.dtype.element_ty).to(tl.float32)
            if ACT == 0:
                a = gate / (1.0 + tl.exp(-gate))
            else:
                a = tl.maximum(gate, 0.0)
            a = a.to(h_ptr.dtype.element_ty).to(tl.float32)
        h = a * u
        if MASK_MODE == 1:
            m = tl.load(tm_ptr + neu, mask=cmask, other=0)
            h = tl.where(m != 0, h, 0.0)
        if MASK_MODE == 2:
            h = tl.where(tl.abs(a) >= thr, h, 0.0)
        tl.store(h_ptr + cols, h.to(h_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def gemv_down_kernel(h_ptr, sel_ptr, idx_ptr, counts_ptr, wd_ptr, y_ptr, D, stride_idx, stride_wd_d, stride_wd_f,
                     SPLIT: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr):
    pid_s = tl.program_id(1)
    g = tl.load(sel_ptr).to(tl.int64)
    cnt = tl.load(counts_ptr + g)
    per = tl.cdiv(tl.cdiv(cnt, BJ), SPLIT) * BJ
    j_lo = pid_s * per
    j_hi = tl.minimum(cnt, j_lo + per)
    ds = tl.program_id(0) * BD + tl.arange(0, BD)
    dmask = ds < D
    acc = tl.zeros((BJ, BD), dtype=tl.float32)
    for j0 in range(j_lo, j_hi, BJ):
        js = j0 + tl.arange(0, BJ)
        jmask = js < j_hi
        neu = tl.load(idx_ptr + g * stride_idx + js, mask=jmask, other=0).to(tl.int64)
        hv = tl.load(h_ptr + js, mask=jmask, other=0.0).to(tl.float32)
        w = tl.load(wd_ptr + ds[None, :] * stride_wd_d + neu[:, None] * stride_wd_f,
                    mask=jmask[:, None] & dmask[None, :], other=0.0)
        acc += w.to(tl.float32) * hv[:, None]
    out = tl.sum(acc, axis=0)
    if SPLIT == 1:
        tl.store(y_ptr + ds, out.to(y_ptr.dtype.element_ty), mask=dmask)
    else:
        if j_lo < j_hi:
            tl.atomic_add(y_ptr + ds, out, mask=dmask, sem="relaxed")


@triton.jit
def compact_kernel(keep_ptr, F, idx_ptr, counts_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    u = (tl.load(keep_ptr + offs, mask=offs < F, other=0) != 0).to(tl.int32)
    pos = tl.cumsum(u, 0) - 1
    tl.store(idx_ptr + pos, offs, mask=u != 0)
    tl.store(counts_ptr, tl.sum(u, 0))


def _tuned(kernel, shapes, reset=None):
    """``kernel`` autotuned over ``shapes`` = [(BM it serves, BN, BK, warps, stages)], keyed on the sizes;
    only the shapes listed for the launch's ``BM`` are tried."""
    configs = [triton.Config({"BN": bn, "BK": bk}, num_warps=w, num_stages=s) for _, bn, bk, w, s in shapes]
    serves = {}
    for (bm, bn, bk, w, s) in shapes:
        serves.setdefault((bn, bk, w, s), set()).add(bm)

    def prune(configs, named_args, **kwargs):
        bm = kwargs.get("BM", named_args.get("BM"))
        keep = [c for c in configs if bm in serves.get((c.kwargs["BN"], c.kwargs["BK"], c.num_warps, c.num_stages), ())]
        return keep or configs[:1]

    return triton.autotune(configs=configs, key=["D", "BM", "IEEE"], prune_configs_by={"early_config_prune": prune},
                           reset_to_zero=reset)(kernel)


#: prefill (BM >= 64) tile shapes of the grouped path, tried once per size
gate_up_tuned = _tuned(gate_up_kernel, [(64, 64, 64, 4, 4), (64, 128, 64, 4, 3), (64, 64, 128, 4, 3),
                                        (128, 64, 64, 8, 3), (128, 128, 64, 8, 3), (128, 64, 64, 4, 4)])
down_tuned = _tuned(down_kernel, [(64, 128, 64, 4, 4), (64, 256, 64, 8, 3), (64, 128, 128, 4, 3),
                                  (128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 128, 64, 4, 4)], reset=["y_ptr"])
