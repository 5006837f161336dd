"""Tests of the exact one-byte products, the packed-bit kernels and the integer top-n update."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apc.clustering import PackedPatterns, cluster, top_n_mask
from apc.clustering.common import top_n_masks
from apc.clustering.engine import ACCUMULATE, assign_pass
from apc.clustering.kernels import FP8_ONE, INT8_ONE, segment_bit_sums, unpack_operand
from apc.clustering.lowp import MATMULS, ExactProduct, resolve_matmul

CUDA = torch.cuda.is_available()
FP8_CUDA = CUDA and torch.cuda.get_device_capability() >= (8, 9)


def _bits(n, width, p=0.5, seed=0):
    return np.random.RandomState(seed).rand(n, width) < p


def _with_ties(n, width, k, seed):
    """Patterns and centroids where many patterns have several equally near centroids."""
    rng = np.random.RandomState(seed)
    c = rng.rand(k, width) < 0.3
    c[1::2] = c[0::2][: len(c[1::2])]  # duplicated centroids: exact ties between 2i and 2i+1
    x = rng.rand(n, width) < 0.2
    x[: n // 4] = False  # empty patterns tie with every centroid
    return x, c


def _fp32_nearest(x, c, kind):
    ov = x.astype(np.float32) @ c.astype(np.float32).T
    score = ov if kind == "activation" else 2 * ov - c.sum(1)[None, :]
    return score.argmax(axis=1)  # numpy: first maximum -> lowest index


def test_fp8_byte_is_one():
    assert torch.tensor(1.0).to(torch.float8_e4m3fn).view(torch.uint8).item() == FP8_ONE
    assert torch.tensor(1).to(torch.int8).item() == INT8_ONE


@pytest.mark.parametrize("width", [13, 37, 64, 203])
@pytest.mark.parametrize("one", [FP8_ONE, INT8_ONE])
def test_unpack_operand_pads_with_zeros_and_counts_rows(width, one):
    bits = _bits(21, width, seed=width)
    packed = torch.from_numpy(np.packbits(bits, axis=1))
    rows, cols = 48, -(-width // 16) * 16 + 16
    out, rowsum = unpack_operand(packed, width, rows, cols, one,
                                 out=torch.full((64, cols), 7, dtype=torch.uint8))  # stale bytes must be cleared
    assert out.shape == (rows, cols) and out.dtype == torch.uint8
    expect = np.zeros((rows, cols), dtype=np.uint8)
    expect[:21, :width] = bits * one
    np.testing.assert_array_equal(out.numpy(), expect)
    np.testing.assert_array_equal(rowsum.numpy(), bits.sum(1))
    if width % 8:  # set padding bits of the last byte are ignored
        dirty = packed.clone()
        dirty[:, -1] |= (1 << (8 - width % 8)) - 1
        again, again_sum = unpack_operand(dirty, width, rows, cols, one)
        assert torch.equal(again, out) and torch.equal(again_sum, rowsum)
    with pytest.raises(ValueError, match="smaller than the data"):
        unpack_operand(packed, width, 10, cols, one)


@pytest.mark.parametrize("name", ["fp8", "int8", "fp32"])
@pytest.mark.parametrize("kind", ["activation", "hamming"])
def test_exact_product_overlaps_and_nearest_match_fp32(name, kind):
    from apc.clustering.distance import nearest_from_overlap

    x, c = _with_ties(70, 45, 10, seed=1)
    prod = ExactProduct(name, torch.device("cpu"), 45)
    cop = prod.prepare_centroids(torch.from_numpy(c))
    xop, xs = prod.unpack(torch.from_numpy(np.packbits(x, axis=1)))
    ov = prod.overlap(xop, cop, 70, 10)
    np.testing.assert_array_equal(ov.numpy(), x.astype(np.int64) @ c.astype(np.int64).T)
    np.testing.assert_array_equal(xs.numpy(), x.sum(1))
    c_sum = torch.from_numpy(c.sum(1)).to(torch.int32 if name == "int8" else torch.float32)
    idx, dist = nearest_from_overlap(ov, xs, kind, c_sum)
    np.testing.assert_array_equal(idx.numpy(), _fp32_nearest(x, c, kind))
    brute = (x[:, None, :] & ~c[None]).sum(-1) if kind == "activation" else (x[:, None, :] != c[None]).sum(-1)
    np.testing.assert_array_equal(dist.numpy(), brute[np.arange(70), idx.numpy()])


def test_resolve_matmul():
    cpu = torch.device("cpu")
    assert resolve_matmul("auto", cpu) == "fp32"
    assert resolve_matmul("INT8", cpu) == "int8"
    assert set(MATMULS) >= {"auto", "fp8", "int8", "bf16", "tf32", "fp32"}
    with pytest.raises(ValueError, match="unknown matmul 'fp4'"):
        resolve_matmul("fp4", cpu)
    with pytest.raises(ValueError, match="matmul 'bf16' needs a CUDA device"):
        resolve_matmul("bf16", cpu)
    with pytest.raises(ValueError, match="unknown matmul"):
        cluster(PackedPatterns.from_bits(_bits(40, 9)), 3, density=0.5, device="cpu", matmul="half")


def test_segment_bit_sums_equal_index_add():
    rng = np.random.RandomState(5)
    bits = _bits(300, 77, seed=5)
    idx = torch.from_numpy(rng.choice([0, 3, 4, 9], size=300))  # most clusters stay empty
    ref = torch.zeros(10, 77, dtype=torch.int64).index_add_(0, idx, torch.from_numpy(bits).long())
    sums = torch.full((10, 77), 2, dtype=torch.int32)  # accumulates into what is there
    segment_bit_sums(torch.from_numpy(np.packbits(bits, axis=1)), idx, sums)
    assert torch.equal(sums.long(), ref + 2)
    with pytest.raises(ValueError, match="idx has shape"):
        segment_bit_sums(torch.from_numpy(np.packbits(bits, axis=1)), idx[:5], sums)


def test_top_n_masks_of_one_sort_equal_one_mask_per_count():
    rng = np.random.RandomState(3)
    score = torch.from_numpy(rng.randint(0, 5, size=(40, 37))).double()  # many ties
    score[:5] = torch.from_numpy(rng.randn(5, 37))
    counts = [1, 9, 18, 37]
    masks = top_n_masks(score, counts)
    for n_keep, mask in zip(counts, masks):
        assert torch.equal(mask, top_n_mask(score, n_keep))
        assert (mask.sum(1) == n_keep).all()
    with pytest.raises(ValueError, match="n_keep"):
        top_n_masks(score, [0])


@pytest.mark.parametrize("n_keep", [1, 7, 20])
def test_integer_top_n_equals_stable_sort(n_keep):
    rng = np.random.RandomState(n_keep)
    counts = torch.from_numpy(rng.randint(0, 4, size=(30, 20)))  # many ties
    before = counts.clone()
    mask = top_n_mask(counts, n_keep)
    ref = top_n_mask(counts.double(), n_keep)  # stable-sort route
    assert torch.equal(mask, ref)
    assert torch.equal(counts, before)  # the scores are not overwritten
    assert (mask.sum(1) == n_keep).all()
    big = counts * (1 << 40)  # keys need int64
    assert torch.equal(top_n_mask(big, n_keep), ref)


@pytest.mark.parametrize("method,opts", [("apc", {}), ("apc_balanced", {}), ("kmeans", {}), ("kmeans_capped", {}),
                                         ("apc", {"blend": 0.3})])
def test_every_product_and_accumulation_gives_the_same_clustering(method, opts):
    bits = _bits(500, 53, p=0.3, seed=7)
    pats = PackedPatterns.from_bits(bits)
    kw = dict(method=method, density=0.3, seed=2, device="cpu", chunk_size=120, max_iter=5, **opts)
    ref = cluster(pats, 11, matmul="fp32", accumulate="index_add", **kw)
    for matmul in ("fp8", "int8"):
        for accumulate in ("packed", "sorted"):
            res = cluster(pats, 11, matmul=matmul, accumulate=accumulate, block_rows=50, **kw)
            assert torch.equal(res.centroids, ref.centroids), (matmul, accumulate)
            assert torch.equal(res.assignments, ref.assignments), (matmul, accumulate)
            assert [h["objective"] for h in res.history] == [h["objective"] for h in ref.history]
            assert res.options["matmul"] == matmul


def test_packed_accumulation_matches_float_sums():
    bits = _bits(260, 40, seed=8)
    pats = PackedPatterns.from_bits(bits)
    c = torch.from_numpy(_bits(6, 40, seed=9))
    out = {}
    for method in ACCUMULATE:
        assign = torch.full((260,), -1, dtype=torch.int64)
        dist = torch.zeros(260)
        out[method] = assign_pass(pats, c, assign, dist, kind="activation", chunk_size=100, block_rows=64,
                                  matmul="int8", accumulate_method=method)
    assert out["packed"].sums.dtype == torch.int32
    for method, res in out.items():
        assert torch.equal(res.sums.long(), out["index_add"].sums.long()), method
        assert int(res.active) == int(bits.sum())


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("width", [203, 1024, 4100])
def test_cuda_kernels_equal_torch_versions(width):
    bits = _bits(1000, width, p=0.4, seed=width)
    packed = torch.from_numpy(np.packbits(bits, axis=1))
    cols = -(-width // 16) * 16
    for one in (FP8_ONE, INT8_ONE):
        cpu, cpu_sum = unpack_operand(packed, width, 1008, cols, one)
        gpu, gpu_sum = unpack_operand(packed.cuda(), width, 1008, cols, one,
                                      out=torch.full((1024, cols), 9, dtype=torch.uint8, device="cuda"))
        assert torch.equal(cpu, gpu.cpu()) and torch.equal(cpu_sum, gpu_sum.cpu())
    rng = np.random.RandomState(width)
    for labels in (rng.randint(0, 37, size=1000), np.repeat(np.arange(5), 200), np.zeros(1000, dtype=np.int64)):
        idx = torch.from_numpy(labels)
        ref = torch.zeros(37, width, dtype=torch.int32)
        segment_bit_sums(packed, idx, ref)
        got = torch.zeros(37, width, dtype=torch.int32, device="cuda")
        segment_bit_sums(packed.cuda(), idx.cuda(), got)
        assert torch.equal(got.cpu(), ref)


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("kind", ["activation", "hamming"])
def test_cuda_one_byte_assignment_equals_fp32_argmax(kind):
    x, c = _with_ties(3000, 1000, 64, seed=3)
    pats = PackedPatterns.from_bits(x)
    ref = torch.from_numpy(_fp32_nearest(x, c, kind))
    cg = torch.from_numpy(c).cuda()
    names = ["int8", "tf32", "fp32", "bf16"] + (["fp8"] if FP8_CUDA else [])
    for name in names:
        for block_rows in (512, 3000):
            assign = torch.full((3000,), -1, dtype=torch.int64, device="cuda")
            dist = torch.zeros(3000, device="cuda")
            res = assign_pass(pats, cg, assign, dist, kind=kind, chunk_size=1500, block_rows=block_rows,
                              matmul=name)
            assert torch.equal(assign.cpu(), ref), (name, block_rows)
            sums = torch.zeros(64, 1000, dtype=torch.int64).index_add_(0, ref, torch.from_numpy(x).long())
            assert torch.equal(res.sums.long().cpu(), sums), name


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_cuda_top_n_kernel_equals_stable_sort():
    from apc.clustering.kernels import top_n_rows

    rng = np.random.RandomState(1)
    for width, n_keep, lo, hi in [(203, 1, -3, 4), (203, 203, 0, 3), (1000, 400, 0, 5), (14336, 7168, 0, 400000)]:
        score = torch.from_numpy(rng.randint(lo, hi, size=(33, width))).to(torch.int32)
        got = top_n_rows(score.cuda(), n_keep)
        assert got is not None and torch.equal(got.cpu(), top_n_mask(score.double(), n_keep)), (width, n_keep)
