"""Masked FFN kernels (apc.deploy): fallback vs masked dense on CPU, Triton vs fallback on CUDA,
the roofline bound, the time-share lookup and the grouped MLP forward."""

import logging
import math

import pytest
import torch

from apc.deploy import ffn
from apc.deploy.ffn import (cats_ffn, cats_mask, column_major, dense_ffn, group_index, group_schedule, grouped_ffn,
                            masked_dense_ffn, per_token_ffn)
from apc.deploy.forward import grouped_mlp_forward
from apc.deploy.roofline import bound, load_table, time_share, write_table

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _weights(d_model=24, d_ff=40, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    w = [torch.randn(d_ff, d_model, generator=g) / d_model ** 0.5, torch.randn(d_ff, d_model, generator=g) / d_model ** 0.5,
         torch.randn(d_model, d_ff, generator=g) / d_ff ** 0.5]
    return [t.to(device=device, dtype=dtype) for t in w]


def _x(t, d_model=24, dtype=torch.float32, device="cpu", seed=1):
    return torch.randn(t, d_model, generator=torch.Generator().manual_seed(seed)).to(device=device, dtype=dtype)


def _close(a, b, tol=1e-5):
    scale = max(1.0, float(b.abs().max()))
    assert float((a.float() - b.float()).abs().max()) <= tol * scale, float((a.float() - b.float()).abs().max())


# ----------------------------------------------------------------------------- CPU, through the fallback


@pytest.mark.parametrize("t", [1, 2, 9])
def test_per_token_equals_masked_dense(t):
    wg, wu, wd = _weights()
    x = _x(t)
    mask = torch.rand(t, 40, generator=torch.Generator().manual_seed(t)) < 0.5
    mask[0] = False  # a token keeping no neuron
    y = per_token_ffn(x, wg, wu, wd, mask)
    _close(y, masked_dense_ffn(x, wg, wu, wd, mask))
    assert float(y[0].abs().max()) == 0.0
    # the kept neurons matter: a different mask gives a different result
    if t > 1:
        assert not torch.allclose(y, per_token_ffn(x, wg, wu, wd, ~mask))


def test_per_token_all_dropped_and_all_kept():
    wg, wu, wd = _weights()
    x = _x(3)
    assert float(per_token_ffn(x, wg, wu, wd, torch.zeros(3, 40, dtype=torch.bool)).abs().max()) == 0.0
    _close(per_token_ffn(x, wg, wu, wd, torch.ones(3, 40, dtype=torch.bool)), dense_ffn(x, wg, wu, wd))


@pytest.mark.parametrize("t", [1, 5, 64])
def test_grouped_equals_masked_dense(t):
    wg, wu, wd = _weights()
    x = _x(t)
    gen = torch.Generator().manual_seed(t)
    masks = torch.rand(6, 40, generator=gen) < 0.5
    masks[2] = False  # a group keeping no neuron
    ids = torch.randint(0, 6, (t,), generator=gen)
    ids[ids == 4] = 5  # group 4 has no token
    if t > 1:
        ids[0] = 2
    y = grouped_ffn(x, wg, wu, wd, ids, masks)
    _close(y, masked_dense_ffn(x, wg, wu, wd, masks[ids]))
    _close(grouped_ffn(x, wg, wu, wd, ids, group_index(masks)), y)  # a prebuilt index gives the same
    _close(grouped_ffn(x, wg, wu, column_major(wd), ids, masks), y)  # and so does the column-major layout
    if t > 1:
        assert float(y[0].abs().max()) == 0.0


def test_grouped_one_group_is_masked_dense_with_that_mask():
    wg, wu, wd = _weights()
    x = _x(7)
    m = torch.rand(1, 40, generator=torch.Generator().manual_seed(3)) < 0.3
    y = grouped_ffn(x, wg, wu, wd, torch.zeros(7, dtype=torch.long), m)
    _close(y, masked_dense_ffn(x, wg, wu, wd, m.expand(7, 40)))


@pytest.mark.parametrize("t", [1, 6])
def test_cats_equals_masked_dense(t):
    wg, wu, wd = _weights()
    x = _x(t)
    thr = float(torch.nn.functional.silu(x @ wg.t()).abs().median())
    mask = cats_mask(x, wg, thr)
    assert 0 < mask.float().mean() < 1
    _close(cats_ffn(x, wg, wu, wd, thr), masked_dense_ffn(x, wg, wu, wd, mask))
    _close(cats_ffn(x, wg, wu, wd, 0.0), dense_ffn(x, wg, wu, wd))
    assert float(cats_ffn(x, wg, wu, wd, 1e9).abs().max()) == 0.0


def test_group_index_lists_kept_neurons_first():
    masks = torch.tensor([[0, 1, 1, 0, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    gi = group_index(masks)
    assert gi.counts.tolist() == [3, 0, 5]
    assert gi.idx[0, :3].tolist() == [1, 2, 4]
    assert gi.idx[2].tolist() == [0, 1, 2, 3, 4]
    assert sorted(gi.idx[1].tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("bm", [1, 2, 4])
def test_group_schedule_covers_each_group(bm):
    ids = torch.tensor([3, 0, 3, 3, 1, 0, 3, 3, 3])
    order, blocks = group_schedule(ids, 5, bm)
    order = order.long()
    assert torch.equal(ids[order], torch.sort(ids).values)
    seen = []
    for g, r0, r1 in blocks.t().tolist():
        assert 0 <= r1 - r0 <= bm
        if r1 > r0:
            assert set(ids[order[r0:r1]].tolist()) == {g}
            seen.extend(range(r0, r1))
    assert sorted(seen) == list(range(len(ids)))
    assert blocks.shape[1] >= sum(-(-int((ids == g).sum()) // bm) for g in range(5))


def test_bad_inputs_raise_clear_errors():
    wg, wu, wd = _weights()
    x = _x(4)
    with pytest.raises(ValueError, match="mask must be"):
        per_token_ffn(x, wg, wu, wd, torch.ones(4, 39, dtype=torch.bool))
    with pytest.raises(ValueError, match="ids must lie"):
        grouped_ffn(x, wg, wu, wd, torch.tensor([0, 1, 2, 3]), torch.ones(3, 40, dtype=torch.bool))
    with pytest.raises(ValueError, match="w_down must have shape"):
        dense_ffn(x, wg, wu, wd.t())
    with pytest.raises(ValueError, match="width"):
        grouped_ffn(x, wg, wu, wd, torch.zeros(4, dtype=torch.long), torch.ones(2, 41, dtype=torch.bool))
    with pytest.raises(ValueError, match="backend"):
        per_token_ffn(x, wg, wu, wd, torch.ones(4, 40, dtype=torch.bool), backend="cutlass")


def test_triton_request_without_cuda_falls_back_and_says_so(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("apc.deploy").addHandler(handler)
    monkeypatch.setattr(ffn, "_said", set())
    monkeypatch.setattr(ffn, "_INTERPRET", False)
    try:
        wg, wu, wd = _weights()
        x = _x(3)
        mask = torch.ones(3, 40, dtype=torch.bool)
        for _ in range(2):
            y = per_token_ffn(x, wg, wu, wd, mask, backend="triton")
    finally:
        logging.getLogger("apc.deploy").removeHandler(handler)
    _close(y, dense_ffn(x, wg, wu, wd))
    msgs = [r.getMessage() for r in records]
    assert len(msgs) == 1 and "torch fallback" in msgs[0]


# ----------------------------------------------------------------------------- roofline and time share


def test_bound_by_hand():
    kw = dict(d_model=2, d_ff=3, peak_flops=1e3, bandwidth=10.0, bytes_per_weight=2)
    # weights 3*2*3*2 = 36 bytes, dense FLOPs 2*T*3*2*3 = 36*T
    assert bound(1, 1, 0.5, **kw) == pytest.approx(0.5 * 36 / 10)  # memory-bound
    assert bound(1, 4, 0.5, **kw) == pytest.approx(36 / 10)  # G*rho capped at 1
    assert bound(1000, 4, 0.5, **kw) == pytest.approx(0.5 * 36000 / 1e3)  # compute-bound
    assert bound(1, 1, 0.5, dense_share=1 / 3, **kw) == pytest.approx((1 / 3 + 2 / 3 * 0.5) * 36 / 10)
    with pytest.raises(ValueError, match="kept_share"):
        bound(1, 1, 1.5, **kw)


def _table():
    rows = []
    for tokens in (1, 4096):
        for g in (8, 32):
            for rho in (0.4, 0.8):
                ratio = rho + (0.1 if g == 32 else 0.0) + (0.5 if tokens == 1 else 0.0)
                rows.append(dict(device="dev", dtype="bfloat16", d_model=4, d_ff=8, kernel="grouped",
                                 assign="uniform", tokens=tokens, groups=g, kept_share=rho, time_ms=ratio,
                                 dense_ms=1.0, ratio=ratio, bound_share=rho, time_over_bound=1.0))
    rows.append(dict(device="dev", dtype="bfloat16", d_model=4, d_ff=8, kernel="per_token", assign="-", tokens=1,
                     groups=1, kept_share=0.5, time_ms=0.7, dense_ms=1.0, ratio=0.7, bound_share=0.5,
                     time_over_bound=1.4))
    return rows


@pytest.mark.parametrize("suffix", [".csv", ".json"])
def test_time_share_interpolates(tmp_path, suffix):
    path = tmp_path / f"table{suffix}"
    write_table(_table(), path, comment="made by hand\nsecond line")
    assert load_table(path)[0]["groups"] == 8
    ts = lambda *a, **k: time_share(path, "grouped", *a, **k)
    assert ts(4096, 0.4, 8) == pytest.approx(0.4)
    assert ts(1, 0.8, 32) == pytest.approx(1.4)
    assert ts(4096, 0.6, 8) == pytest.approx(0.6)  # linear in rho
    assert ts(4096, 0.4, 16) == pytest.approx(0.45)  # 16 is halfway between 8 and 32 in log groups
    assert ts(4096, 0.5, 16) == pytest.approx(0.55)
    assert ts(4096, 0.1, 2) == pytest.approx(0.4)  # clamped at the edges
    assert ts(4096, 0.95, 1000) == pytest.approx(0.9)
    assert time_share(path, "per_token", 1, 0.3) == pytest.approx(0.7)
    assert time_share(path, "dense", 1, 0.3) == 1.0
    with pytest.raises(ValueError, match="at 16 tokens"):
        ts(16, 0.5, 8)
    with pytest.raises(ValueError, match="no rows for kernel"):
        time_share(path, "gate", 1, 0.5)


def test_time_share_needs_one_setup():
    rows = _table() + [dict(r, device="other") for r in _table()]
    with pytest.raises(ValueError, match="several setups"):
        time_share(rows, "grouped", 1, 0.5, 8)
    assert time_share(rows, "grouped", 1, 0.4, 8, device="other") == pytest.approx(0.9)


# ----------------------------------------------------------------------------- grouped MLP forward


def _centroid_setup(model, k=5, seed=0):
    from apc.common.projections import decoder_layers

    gen = torch.Generator().manual_seed(seed)
    n_layers = len(decoder_layers(model))
    d_ff = model.config.intermediate_size
    cents = torch.rand(1, k, d_ff, generator=gen) < 0.5
    thr = [0.05 * (l + 1) for l in range(n_layers)]
    return cents, thr


def _oracle_choose(model, cents, thr):
    """Nearest centroid of each position's own down_in pattern, as the centroid_only hook path does."""
    from apc.common.projections import decoder_layers
    from apc.perplexity.masking import nearest_centroid

    layers = decoder_layers(model)
    c = cents[0].float()

    def choose(l, x):
        mlp = layers[l].mlp
        p = (mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)).abs().float() >= thr[l]
        return nearest_centroid(p.float(), c), cents[0]

    return choose


@pytest.mark.parametrize("skip_first", [False, True])
def test_grouped_forward_equals_centroid_hook_path(tiny_llama, skip_first):
    from apc.perplexity.masking import install_interventions

    model = tiny_llama
    cents, thr = _centroid_setup(model)
    tokens = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        dense = model(tokens).logits
        with install_interventions(model, "centroid_only", projections=("down_in",), thresholds={"down_in": thr},
                                   centroids={"down_in": cents}, skip_first_position=skip_first):
            hooked = model(tokens).logits
        with grouped_mlp_forward(model, _oracle_choose(model, cents, thr), keep_first_position=skip_first):
            grouped = model(tokens).logits
        after = model(tokens).logits
    assert float((hooked - dense).abs().max()) > 1e-3  # the masks change the logits
    _close(grouped, hooked, 1e-4)
    _close(after, dense, 0)  # the original forwards are back


def test_grouped_forward_checks_choose(tiny_llama):
    bad = lambda l, x: (torch.zeros(x.shape[0], dtype=torch.long), torch.ones(2, 43, dtype=torch.bool))
    with torch.no_grad(), grouped_mlp_forward(tiny_llama, bad):
        with pytest.raises(ValueError, match="expected \\(K, 44\\)"):
            tiny_llama(torch.zeros(1, 4, dtype=torch.long))


# ----------------------------------------------------------------------------- CUDA: Triton vs fallback


def _tri_vs_torch(fn, *args, tol=2e-2):
    y = fn(*args, backend="triton")
    ref = fn(*args, backend="torch")
    assert y.dtype == ref.dtype and y.shape == ref.shape
    _close(y, ref, tol)
    return y


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("t", [1, 3, 16, 200])
def test_cuda_per_token_and_cats(dtype, t):
    wg, wu, wd = _weights(256, 704, dtype, "cuda")
    x = _x(t, 256, dtype, "cuda")
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    mask = torch.rand(t, 704, device="cuda") < 0.4
    mask[0, :] = False
    y = _tri_vs_torch(per_token_ffn, x, wg, wu, wd, mask, tol=tol)
    assert float(y[0].abs().max()) == 0.0
    _tri_vs_torch(per_token_ffn, x, wg, wu, column_major(wd), mask, tol=tol)
    thr = float(torch.nn.functional.silu((x @ wg.t()).float()).abs().median())
    _tri_vs_torch(cats_ffn, x, wg, wu, column_major(wd), thr, tol=tol)


@cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("t,k,d_ff", [(1, 4, 704), (7, 3, 704), (300, 8, 704), (600, 64, 704), (2000, 4, 704),
                                      (66, 6, 44), (500, 3, 300)])
def test_cuda_grouped(dtype, t, k, d_ff):
    wg, wu, wd = _weights(256, d_ff, dtype, "cuda")
    x = _x(t, 256, dtype, "cuda")
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    masks = torch.rand(k, d_ff, device="cuda") < 0.5
    masks[-1] = True  # a group keeping every neuron: tiles past a width that is no multiple of the tiles
    masks[1 % k] = False
    ids = torch.randint(0, k, (t,), device="cuda")
    if k > 2:
        ids[ids == 2] = 0  # group 2 has no token
    y = _tri_vs_torch(grouped_ffn, x, wg, wu, column_major(wd), ids, masks, tol=tol)
    _close(grouped_ffn(x, wg, wu, wd, ids, masks, backend="triton"), y, tol)  # row-major w_down
    ref = masked_dense_ffn(x.float(), wg.float(), wu.float(), wd.float(), masks[ids])
    _close(y, ref, 3e-2 if dtype == torch.bfloat16 else 1e-4)


@cuda
def test_cuda_grouped_forward_equals_hook_path(tiny_llama):
    from apc.perplexity.masking import install_interventions

    model = tiny_llama.cuda()
    cents, thr = _centroid_setup(model)
    tokens = torch.randint(0, 128, (2, 33), generator=torch.Generator().manual_seed(5)).cuda()
    with torch.no_grad():
        with install_interventions(model, "centroid_only", projections=("down_in",), thresholds={"down_in": thr},
                                   centroids={"down_in": cents}, skip_first_position=True):
            hooked = model(tokens).logits
        with grouped_mlp_forward(model, _oracle_choose(model, cents.cuda(), thr), backend="triton",
                                 keep_first_position=True):
            grouped = model(tokens).logits
    _close(grouped, hooked, 1e-3)


@cuda
@pytest.mark.parametrize("t,d_ff", [(1, 704), (5, 14336), (1, 44)])
def test_cuda_union_index_lists_the_union(t, d_ff):
    keep = torch.rand(t, d_ff, device="cuda") < 0.3
    idx, counts = ffn.union_index(keep)
    want = keep.any(dim=0).nonzero().squeeze(1)
    assert int(counts[0]) == want.numel()
    assert torch.equal(idx[0, :want.numel()].long(), want)


# ----------------------------------------------------------------------------- benchmark helpers


def _bench_module():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ffn_masks.py"
    spec = importlib.util.spec_from_file_location("bench_ffn_masks", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_skewed_id_distribution_from_counts(tmp_path):
    import json

    import numpy as np

    bench = _bench_module()
    path = tmp_path / "point.json"
    path.write_text(json.dumps({"id_counts": {"down_in": [[1, 0, 3, 0], [0, 2, 2, 0]]}}))
    p, label, _ = bench.id_distribution(str(path), None)
    assert label == "skewed"
    assert np.allclose(p, [0.625, 0.375, 0.0, 0.0])  # mean of the sorted shares [.75 .25 0 0] and [.5 .5 0 0]
    assert np.allclose(bench.resample(p, 4), p)
    q = bench.resample(p, 2)
    assert np.allclose(q, [1.0, 0.0])
    assert np.allclose(bench.resample(p, 8), [0.3125, 0.3125, 0.1875, 0.1875, 0, 0, 0, 0])
    none, label, note = bench.id_distribution(str(tmp_path / "absent.json"), None)
    assert none is None and label == "zipf1.1" and "absent" in note
    z = bench.resample(None, 5)
    assert np.isclose(z.sum(), 1.0) and np.all(np.diff(z) < 0)
