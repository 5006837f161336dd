"""The sparse kernels registered as torch operators (apc.deploy.ops): fake implementations (shapes and dtypes
under FakeTensorMode and inside a fullgraph torch.compile), and the torch fallback against dense references."""

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

from apc.deploy import ops
from apc.deploy.ffn import group_index, masked_dense_ffn

K, N = 48, 80


def _x(t, seed=0):
    return torch.randn(t, K, generator=torch.Generator().manual_seed(seed))


def _rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize("t", [1, 5])
@pytest.mark.parametrize("case", ["dense", "threshold", "scaled", "all_off"])
def test_in_sparse_fallback_equals_reference(t, case):
    x = _x(t)
    w_t = torch.randn(K, N, generator=torch.Generator().manual_seed(1))
    thr = None if case == "dense" else torch.tensor([1e9 if case == "all_off" else 0.6])
    scale = torch.rand(K, generator=torch.Generator().manual_seed(2)) * 2 if case == "scaled" else None
    score = x * (1 if scale is None else scale)
    keep = score.abs() > (-1 if thr is None else float(thr))
    ref = x.masked_fill(~keep, 0).double() @ w_t.double()
    out = torch.ops.apc.in_sparse_gemv(x, w_t, thr, scale)
    assert out.dtype == torch.float32 and out.shape == (t, N)
    if case == "all_off":
        assert out.abs().max() == 0
    else:
        assert _rel(out, ref) < 1e-5


@pytest.mark.parametrize("t", [1, 4])
def test_out_sparse_fallback_equals_reference(t):
    x = _x(t)
    w = torch.randn(2 * N, K, generator=torch.Generator().manual_seed(3))
    mask = torch.rand(t, N, generator=torch.Generator().manual_seed(4)) < 0.4
    union = mask.any(0).repeat(2)
    ref = (x.double() @ w.double().t()) * union
    out = ops.masked_linear(x, w, mask)
    assert out.shape == (t, 2 * N) and out.dtype == torch.float32
    assert _rel(out, ref) < 1e-6
    assert out[:, ~union].abs().max() == 0


def test_grouped_ffn_op_equals_masked_dense():
    g = torch.Generator().manual_seed(5)
    d, f, t = 32, 40, 6
    x = torch.randn(t, d, generator=g)
    wg, wu, wd = torch.randn(f, d, generator=g), torch.randn(f, d, generator=g), torch.randn(d, f, generator=g)
    masks = torch.rand(3, f, generator=g) < 0.5
    ids = torch.randint(0, 3, (t,), generator=g)
    gi = group_index(masks)
    out = torch.ops.apc.grouped_ffn(x, wg, wu, wd, ids, gi.idx, gi.counts)
    assert _rel(out, masked_dense_ffn(x, wg, wu, wd, masks[ids])) < 1e-5


def test_fake_implementations_give_shapes_and_dtypes():
    with FakeTensorMode():
        x = torch.empty(3, K, dtype=torch.bfloat16)
        p = torch.ops.apc.in_sparse_gemv(x, torch.empty(K, N, dtype=torch.bfloat16), torch.empty(1), None)
        q = torch.ops.apc.out_sparse_gemv(x, torch.empty(2 * N, K, dtype=torch.bfloat16),
                                          torch.empty(3, N, dtype=torch.bool))
        y = torch.ops.apc.grouped_ffn(torch.empty(3, 16), torch.empty(8, 16), torch.empty(8, 16), torch.empty(16, 8),
                                      torch.empty(3, dtype=torch.int64), torch.empty(2, 8, dtype=torch.int32),
                                      torch.empty(2, dtype=torch.int32))
    assert (p.shape, p.dtype) == ((3, N), torch.float32)
    assert (q.shape, q.dtype) == ((1, 3, 2 * N), torch.float32)
    assert (y.shape, y.dtype) == ((3, 16), torch.float32)


def test_fake_rejects_bad_shapes():
    with FakeTensorMode():
        with pytest.raises(ValueError, match="must agree"):
            torch.ops.apc.in_sparse_gemv(torch.empty(1, K), torch.empty(K + 1, N), None, None)
        with pytest.raises(ValueError, match="mask must be"):
            torch.ops.apc.out_sparse_gemv(torch.empty(1, K), torch.empty(N, K), torch.empty(1, 7, dtype=torch.bool))


def test_opcheck():
    """torch.library.opcheck: schema, fake tensor and dispatch consistency of the real and fake paths."""
    x = _x(2)
    torch.library.opcheck(torch.ops.apc.in_sparse_gemv.default,
                          (x, torch.randn(K, N), torch.tensor([0.5]), torch.rand(K)))
    torch.library.opcheck(torch.ops.apc.out_sparse_gemv.default,
                          (x, torch.randn(2 * N, K), torch.rand(2, N) < 0.5))


def test_compiled_graph_keeps_the_operators():
    """A fullgraph compile around the operators (a norm before, an activation and a residual add after)."""
    w_t = torch.randn(K, 2 * K, generator=torch.Generator().manual_seed(6))
    thr = torch.tensor([0.3])

    def f(x):
        n = torch.nn.functional.rms_norm(x, (K,))
        g, u = ops.sparse_linear(n, w_t, thr).chunk(2, dim=-1)
        return x + torch.nn.functional.silu(g) * u

    seen = []

    def backend(gm, example_inputs):
        seen.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    x = _x(1, seed=7)
    out = torch.compile(f, fullgraph=True, backend=backend)(x)
    assert any("apc.in_sparse_gemv" in s for s in seen)
    assert _rel(out, f(x)) < 1e-6
    assert _rel(torch.compile(f, fullgraph=True, backend="aot_eager")(x), f(x)) < 1e-6


KERNELS = pytest.mark.skipif(not (torch.cuda.is_available() or ops._INTERPRET) or ops._tg is None,
                             reason="the Triton kernels need CUDA or Triton's interpreter")


@KERNELS
@pytest.mark.parametrize("t", [1, 3, 16])
@pytest.mark.parametrize("tile", [(32, 64, 4), (16, 128, 2, 3)])
@pytest.mark.parametrize("case", ["dense", "threshold", "scaled", "all_off", "one_channel"])
def test_in_sparse_kernel_equals_reference(t, tile, case, monkeypatch):
    """The tile kernel (atomic adds into the self-clearing workspace) against float64, three calls in a row on
    fresh inputs: each call leaves the workspace and counters at zero, and every output is written."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    k, n = 200, 150  # not multiples of the tiles: the edge masks are exercised
    monkeypatch.setitem(ops.CONFIG, f"in{1 if t == 1 else 16}", tile)
    g = torch.Generator().manual_seed(t + 10 * tile[0])
    w_t = torch.randn(k, n, generator=g).to(dev, dt)
    for _ in range(3):
        x = torch.randn(t, k, generator=g).to(dev, dt)
        thr = None if case == "dense" else torch.tensor([{"all_off": 1e9, "one_channel": 0.0}.get(case, 0.7)],
                                                          device=dev)
        if case == "one_channel":
            x = torch.zeros_like(x)
            x[:, 7] = 1.5
        scale = (torch.rand(k, generator=g) * 2).to(dev) if case == "scaled" else None
        keep = (x.float() * (1 if scale is None else scale)).abs() > (-1 if thr is None else float(thr))
        out = torch.ops.apc.in_sparse_gemv(x, w_t, thr, scale)
        assert out.shape == (t, n) and out.dtype == torch.float32 and bool(out.isfinite().all())
        ref = x.double().masked_fill(~keep, 0) @ w_t.double()
        if case == "all_off":
            assert out.abs().max() == 0
        else:
            assert _rel(out, ref) < (1e-2 if dt == torch.bfloat16 else 1e-5)
    ws = [v for key, v in ops._WORK.items() if key[0] in ("in_acc", "in_cnt") and key[2] == n]
    assert ws and all(int((v != 0).sum()) == 0 for v in ws)


@KERNELS
@pytest.mark.parametrize("t", [1, 4])
def test_out_sparse_kernel_equals_reference(t, monkeypatch):
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    monkeypatch.setitem(ops.CONFIG, f"out{1 if t == 1 else 16}", (32, 64, 4))
    g = torch.Generator().manual_seed(20 + t)
    x = torch.randn(t, K, generator=g).to(dev, dt)
    w = torch.randn(2 * N, K, generator=g).to(dev, dt)
    mask = (torch.rand(t, N, generator=g) < 0.4).to(dev)
    ref = (x.double() @ w.double().t()) * mask.any(0).repeat(2)
    assert _rel(ops.masked_linear(x, w, mask), ref) < (1e-2 if dt == torch.bfloat16 else 1e-5)


def _attn_inputs(b, nh, nkv, hd, length, pos, dev="cpu", dt=torch.float32, seed=30):
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.randn(*s, generator=g).to(dev, dt)

    return (r(b, nh, hd), r(b, nkv, hd), r(b, nkv, hd), r(b, nkv, length, hd), r(b, nkv, length, hd),
            torch.tensor([pos], device=dev))


def _attn_ref(q, k, v, kc, vc, pos):
    kc, vc = kc.double().clone(), vc.double().clone()
    kc[:, :, int(pos)] = k.double()
    vc[:, :, int(pos)] = v.double()
    return ops.attention_reference(q.double(), kc, vc, pos), kc, vc


@pytest.mark.parametrize("pos", [0, 9, 23])
def test_decode_attention_fallback_writes_the_cache_and_equals_sdpa(pos, monkeypatch):
    monkeypatch.setattr(ops, "_ta", None)  # the torch fallback, also where Triton's interpreter is on
    q, k, v, kc, vc, p = _attn_inputs(2, 6, 2, 8, 24, pos)
    ref, rk, rv = _attn_ref(q, k, v, kc, vc, p)
    out = torch.ops.apc.decode_attention(q, k, v, kc, vc, p)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert _rel(out, ref) < 1e-6 and torch.equal(kc.double(), rk) and torch.equal(vc.double(), rv)
    # by hand for one head: softmax over positions 0 .. pos of the group's key head
    s = (rk[1, 0, :pos + 1] @ q[1, 2].double()) / 8 ** 0.5
    assert _rel(out[1, 2], torch.softmax(s, 0) @ rv[1, 0, :pos + 1]) < 1e-6


class _OpLog(TorchDispatchMode):
    """The operators dispatched inside it, by name."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func.name()))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("b", [1, 3])
def test_cached_attention_takes_the_operator_up_to_its_batch(b, monkeypatch):
    """Batch <= ATTN_KERNEL_MAX_BATCH: the decode_attention operator; above it the cache write and SDPA as torch
    ops (no operator call); both write the caches at pos and equal the float64 reference."""
    monkeypatch.setattr(ops, "_ta", None)
    monkeypatch.setattr(ops, "ATTN_KERNEL_MAX_BATCH", 1)
    q, k, v, kc, vc, p = _attn_inputs(b, 6, 2, 8, 24, 11, seed=40 + b)
    ref, rk, rv = _attn_ref(q, k, v, kc, vc, p)
    with _OpLog() as log:
        out = ops.cached_attention(q, k, v, kc, vc, p)
    assert ("apc::decode_attention" in log.names) == (b == 1)
    assert (b > 1) == any("index_copy" in n for n in log.names)
    assert out.shape == q.shape and _rel(out, ref) < 1e-6
    assert torch.equal(kc.double(), rk) and torch.equal(vc.double(), rv)
    with pytest.raises(ValueError, match="disagree"):
        ops.cached_attention(q, k[:, :1], v[:, :1], kc, vc, p)


def test_decode_attention_fake_and_opcheck(monkeypatch):
    monkeypatch.setattr(ops, "_ta", None)  # opcheck of the registration on the torch fallback
    with FakeTensorMode():
        q, k, v, kc, vc, p = _attn_inputs(1, 4, 2, 16, 8, 3)
        out = torch.ops.apc.decode_attention(q, k, v, kc, vc, p)
        assert out.shape == (1, 4, 16)
        with pytest.raises(ValueError, match="disagree"):
            torch.ops.apc.decode_attention(q, k[:, :1], v[:, :1], kc, vc, p)
        with pytest.raises(ValueError, match="int64"):
            torch.ops.apc.decode_attention(q, k, v, kc, vc, p.int())
    torch.library.opcheck(torch.ops.apc.decode_attention.default, _attn_inputs(2, 4, 2, 16, 8, 5))


@KERNELS
@pytest.mark.parametrize("shape", [(1, 12, 4, 64, 40), (3, 8, 8, 16, 17), (2, 9, 3, 32, 33)])
@pytest.mark.parametrize("tile", [(16, 2, 4), (16, 16, 2), (32, 32, 8)])
def test_decode_attention_kernel_equals_reference(shape, tile, monkeypatch):
    """The split-KV kernel against float64 SDPA at several positions (the last one, one inside a split, 0),
    the caches written at pos, two calls in a row (the arrival counters reset)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dt = torch.bfloat16 if dev == "cuda" else torch.float32
    monkeypatch.setitem(ops.CONFIG, "attn", tile)
    b, nh, nkv, hd, length = shape
    for pos in (length - 1, length // 3, 0):
        q, k, v, kc, vc, p = _attn_inputs(b, nh, nkv, hd, length, pos, dev, dt, seed=pos)
        ref, rk, rv = _attn_ref(q, k, v, kc, vc, p)
        out = torch.ops.apc.decode_attention(q, k, v, kc, vc, p)
        assert out.shape == q.shape and out.dtype == dt
        assert _rel(out, ref) < (1e-2 if dt == torch.bfloat16 else 1e-5)
        assert torch.equal(kc.double(), rk.to(dt).double()) and torch.equal(vc.double(), rv.to(dt).double())
    assert all(int(v.sum()) == 0 for key, v in ops._WORK.items() if key[0] == "attn_cnt")
