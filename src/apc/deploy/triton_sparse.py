"""Triton kernels for input- and output-sparse GEMV at decode (imported only where Triton is installed).

All accumulate in float32 with ``atomic_add`` into a buffer ``acc`` that the caller keeps at zero
(split-K over thread blocks: one token fills the GPU).  Tokens: ``T <= BT`` (``BT`` is 1 for one token, else 16: the matrix instructions want 16 rows);
a weight row is read once for the *union* of the tokens that keep it, each token's own keep decides
its product.  Weights are read with ``evict_first`` (streamed), activations with ``evict_last``.

* ``in_sparse_kernel``: ``acc[t, n] += sum_k keep[t, k] * x[t, k] * w_t[k, n]`` with ``w_t (K, N)``
  row-major (the transposed ``nn.Linear`` weight: a skipped input channel skips one contiguous row).
  ``keep = |x[t, k] * scale[k]| > thr`` (``HAS_SCALE``: WINA's per-channel scale; thr 0 skips zeros),
  tested inside the load: no index list.  A program covers ``ITERS * BK`` rows (one atomic add per
  output and program).
* ``out_sparse_kernel``: ``acc[t, n] += keep_u[n] * sum_k x[t, k] * w[n, k]`` with ``w (N, K)``
  row-major (a dropped output neuron skips one contiguous row); ``keep_u`` the union over tokens of
  ``mask[t, n % NM]`` (``mask (T, NM) uint8``; with ``NM = N / 2`` one mask serves the stacked gate
  and up weights).
* ``act_mul_kernel``: ``h[t, j] = act(gate) * up [* mask[t, j]]`` from ``acc (T, 2F)`` (gate in the
  first ``F`` columns) or, with ``HAS_A``, ``act(gate)`` read from ``a (T, F)``; writes zeros back
  into ``acc`` and into ``zero (T, Z)`` (the next accumulator), so no separate clearing launch.
* ``take_kernel``: ``out = acc.to(out dtype)``, and ``acc = 0``.
"""

import triton
import triton.language as tl


@triton.jit
def in_sparse_kernel(x_ptr, w_ptr, s_ptr, acc_ptr, thr, T, K, N, stride_x, stride_w, stride_acc,
                     HAS_SCALE: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr,
                     ITERS: tl.constexpr):
    # each program covers ITERS * BK input rows of one BN-wide column block: one atomic add per
    # output per program
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    ns = pid_n * BN + tl.arange(0, BN)
    nmask = ns < N
    if BT == 1:
        acc = tl.zeros((BN,), dtype=tl.float32)
        for it in tl.static_range(ITERS):
            ks = (pid_k * ITERS + it) * BK + tl.arange(0, BK)
            kmask = ks < K
            xv = tl.load(x_ptr + ks, mask=kmask, other=0.0, eviction_policy="evict_last").to(tl.float32)
            score = xv
            if HAS_SCALE:
                score = xv * tl.load(s_ptr + ks, mask=kmask, other=0.0, eviction_policy="evict_last").to(tl.float32)
            keep = tl.abs(score) > thr
            xv = tl.where(keep, xv, 0.0)
            w = tl.load(w_ptr + ks[:, None].to(tl.int64) * stride_w + ns[None, :],
                        mask=(keep & kmask)[:, None] & nmask[None, :], other=0.0, eviction_policy="evict_first")
            acc += tl.sum(w.to(tl.float32) * xv[:, None], axis=0)
        tl.atomic_add(acc_ptr + ns, acc, mask=nmask, sem="relaxed")
    else:
        ts = tl.arange(0, BT)
        tmask = ts < T
        acc = tl.zeros((BT, BN), dtype=tl.float32)
        for it in tl.static_range(ITERS):
            ks = (pid_k * ITERS + it) * BK + tl.arange(0, BK)
            kmask = ks < K
            xt = tl.load(x_ptr + ts[:, None] * stride_x + ks[None, :], mask=tmask[:, None] & kmask[None, :],
                         other=0.0, eviction_policy="evict_last").to(tl.float32)
            score = xt
            if HAS_SCALE:
                sv = tl.load(s_ptr + ks, mask=kmask, other=0.0, eviction_policy="evict_last").to(tl.float32)
                score = xt * sv[None, :]
            keep = (tl.abs(score) > thr) & tmask[:, None] & kmask[None, :]
            xt = tl.where(keep, xt, 0.0)
            union = tl.max(keep.to(tl.int32), axis=0) > 0
            w = tl.load(w_ptr + ks[:, None].to(tl.int64) * stride_w + ns[None, :],
                        mask=union[:, None] & nmask[None, :], other=0.0, eviction_policy="evict_first")
            acc = tl.dot(xt.to(w.dtype), w, acc, out_dtype=tl.float32)
        tl.atomic_add(acc_ptr + ts[:, None] * stride_acc + ns[None, :], acc, mask=tmask[:, None] & nmask[None, :],
                      sem="relaxed")


@triton.jit
def out_sparse_kernel(x_ptr, w_ptr, m_ptr, acc_ptr, T, K, N, NM, stride_x, stride_w, stride_m, stride_acc,
                      BT: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    ns = pid_n * BN + tl.arange(0, BN)
    nmask = ns < N
    ts = tl.arange(0, BT)
    tmask = ts < T
    mcol = ns % NM
    m = tl.load(m_ptr + ts[:, None] * stride_m + mcol[None, :], mask=tmask[:, None] & nmask[None, :], other=0)
    union = (tl.max(m.to(tl.int32), axis=0) > 0) & nmask
    ks = pid_k * BK + tl.arange(0, BK)
    kmask = ks < K
    w = tl.load(w_ptr + ns[:, None].to(tl.int64) * stride_w + ks[None, :], mask=union[:, None] & kmask[None, :],
                other=0.0, eviction_policy="evict_first")
    if BT == 1:
        xv = tl.load(x_ptr + ks, mask=kmask, other=0.0, eviction_policy="evict_last")
        part = tl.sum(w.to(tl.float32) * xv.to(tl.float32)[None, :], axis=1)
        tl.atomic_add(acc_ptr + ns, part, mask=union, sem="relaxed")
    else:
        xt = tl.load(x_ptr + ts[:, None] * stride_x + ks[None, :], mask=tmask[:, None] & kmask[None, :], other=0.0,
                     eviction_policy="evict_last")
        part = tl.dot(xt.to(w.dtype), tl.trans(w), out_dtype=tl.float32)
        tl.atomic_add(acc_ptr + ts[:, None] * stride_acc + ns[None, :], part, mask=tmask[:, None] & union[None, :],
                      sem="relaxed")


@triton.jit
def act_mul_kernel(acc_ptr, a_ptr, m_ptr, h_ptr, z_ptr, F, Z, stride_acc, stride_a, stride_m, stride_h, stride_z,
                   ACT: tl.constexpr, HAS_A: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(1)
    js = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    jm = js < F  # the grid covers max(F, Z) columns
    row = acc_ptr + t * stride_acc
    if HAS_A:
        a = tl.load(a_ptr + t * stride_a + js, mask=jm, other=0.0).to(tl.float32)
        u = tl.load(row + js, mask=jm, other=0.0)
    else:
        g = tl.load(row + js, mask=jm, other=0.0)
        u = tl.load(row + F + js, mask=jm, other=0.0)
        # round like a product in the input dtype would, before the activation
        g = g.to(h_ptr.dtype.element_ty).to(tl.float32)
        if ACT == 0:
            a = g / (1.0 + tl.exp(-g))
        else:
            a = tl.maximum(g, 0.0)
        a = a.to(h_ptr.dtype.element_ty).to(tl.float32)
    h = a * u.to(h_ptr.dtype.element_ty).to(tl.float32)
    if HAS_MASK:
        m = tl.load(m_ptr + t * stride_m + js, mask=jm, other=0)
        h = tl.where(m != 0, h, 0.0)
    tl.store(h_ptr + t * stride_h + js, h.to(h_ptr.dtype.element_ty), mask=jm)
    # every thread's loads of acc are done (h depends on them) before any thread clears it: a thread
    # may clear an element another thread read
    tl.debug_barrier()
    zero = tl.zeros((BLOCK,), dtype=tl.float32)
    tl.store(row + js, zero, mask=jm)
    if not HAS_A:
        tl.store(row + F + js, zero, mask=jm)
    tl.store(z_ptr + t * stride_z + js, zero, mask=js < Z)


@triton.jit
def take_kernel(acc_ptr, out_ptr, N, stride_acc, stride_out, BLOCK: tl.constexpr):
    t = tl.program_id(1)
    ns = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    nm = ns < N
    v = tl.load(acc_ptr + t * stride_acc + ns, mask=nm, other=0.0)
    tl.store(out_ptr + t * stride_out + ns, v.to(out_ptr.dtype.element_ty), mask=nm)
    tl.debug_barrier()  # all loads done before any thread clears
    tl.store(acc_ptr + t * stride_acc + ns, tl.zeros_like(v), mask=nm)
