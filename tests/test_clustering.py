"""Tests of apc.clustering: distances, APC, baselines, registry, data access and centroid files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from apc.clustering import (
    ClusterResult,
    PackedPatterns,
    activation_aware_distance,
    available_methods,
    cluster,
    density_to_count,
    get_method,
    hamming_distance,
    load_centroids,
    nearest,
    register,
    resolve_device,
    save_centroids,
)
from apc.clustering.engine import balanced_assign
from apc.extraction.patterns import PatternReader, PatternWriter


def _random_bits(n, width, p=0.5, seed=0):
    return np.random.RandomState(seed).rand(n, width) < p


def _planted(k=8, width=203, n=2400, noise=0.05, seed=0):
    rng = np.random.RandomState(seed)
    masks = rng.rand(k, width) < 0.5
    labels = rng.randint(k, size=n)
    bits = masks[labels] ^ (rng.rand(n, width) < noise)
    return bits, labels


def _recall(bits, centroids):
    ov = bits.astype(np.int64) @ np.asarray(centroids, dtype=np.int64).T
    return ov.max(axis=1).sum() / bits.sum(), ov.argmax(axis=1)


# --------------------------------------------------------------------------- distances


@pytest.mark.parametrize("width", [13, 37])
def test_matmul_distances_equal_brute_force(width):
    x = _random_bits(40, width, 0.5, seed=1)
    c = _random_bits(9, width, 0.4, seed=2)
    xt, ct = torch.from_numpy(x).float(), torch.from_numpy(c).float()
    aa = activation_aware_distance(xt, ct).numpy()
    ham = hamming_distance(xt, ct).numpy()
    brute_aa = (x[:, None, :] & ~c[None, :, :]).sum(-1)
    brute_ham = (x[:, None, :] != c[None, :, :]).sum(-1)
    np.testing.assert_array_equal(aa, brute_aa)
    np.testing.assert_array_equal(ham, brute_ham)
    for kind, brute in (("activation", brute_aa), ("hamming", brute_ham)):
        idx, dist = nearest(xt, ct, kind)
        np.testing.assert_array_equal(idx.numpy(), brute.argmin(1))
        np.testing.assert_array_equal(dist.numpy(), brute.min(1))


def test_paper_example_distance():
    x = torch.tensor([[1, 0, 1, 1, 0, 0]], dtype=torch.float32)
    c = torch.tensor([[0, 1, 1, 0, 1, 0]], dtype=torch.float32)
    assert activation_aware_distance(x, c).item() == 2


def test_ties_go_to_lowest_index():
    x = torch.tensor([[1, 1, 0, 0, 1], [0, 0, 1, 1, 0]], dtype=torch.float32)
    # c1 == c3 and c0 ties with them for row 0 (overlap 2); c2 alone covers row 1
    c = torch.tensor([[1, 1, 0, 0, 0], [0, 1, 0, 0, 1], [0, 0, 1, 1, 0], [0, 1, 0, 0, 1]], dtype=torch.float32)
    idx, dist = nearest(x, c, "activation")
    assert idx.tolist() == [0, 2]
    assert dist.tolist() == [1.0, 0.0]
    idx, _ = nearest(x, c[[3, 1, 2]], "hamming")
    assert idx.tolist() == [0, 2]
    # the whole method: duplicated centroids, the later copy ends up empty
    bits = np.tile(np.array([[1, 1, 0, 0, 1, 0, 0]], dtype=bool), (6, 1))
    init = np.array([[1, 1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0]], dtype=bool)
    res = cluster(PackedPatterns.from_bits(bits), 2, method="kmeans", density=0.5, device="cpu",
                  init_centroids=init, max_iter=1)
    assert res.assignments.tolist() == [0] * 6


# --------------------------------------------------------------------------- APC


@pytest.mark.parametrize("width,density", [(13, 0.3), (37, 0.5), (203, 0.77)])
@pytest.mark.parametrize("opts", [{}, {"blend": 0.5}, {"assignment": "balanced"}, {"init": "kmeans++"}])
def test_every_centroid_has_exactly_the_capped_density(width, density, opts):
    bits = _random_bits(300, width, 0.45, seed=width)
    bits[:100] = bits[0]  # many duplicates -> empty clusters and re-seeding get exercised
    res = cluster(PackedPatterns.from_bits(bits), 12, density=density, seed=3, device="cpu",
                  chunk_size=64, max_iter=6, **opts)
    assert res.centroids.dtype == torch.bool and res.centroids.shape == (12, width)
    assert (res.centroids.sum(1) == density_to_count(density, width)).all()


def test_planted_clusters_are_recovered_and_beat_random():
    bits, labels = _planted()
    pats = PackedPatterns.from_bits(bits)
    res = cluster(pats, 8, method="apc", density=0.5, seed=0, device="cpu", init="kmeans++", chunk_size=500)
    assert res.converged
    recall, assign = _recall(bits, res.centroids.numpy())
    np.testing.assert_array_equal(assign, res.assignments.numpy())
    purity = sum(np.bincount(labels[assign == c]).max() for c in np.unique(assign)) / len(labels)
    assert purity >= 0.95
    rand = cluster(pats, 8, method="random", density=0.5, seed=0)
    rand_recall, _ = _recall(bits, rand.centroids.numpy())
    assert recall - rand_recall >= 0.15
    # the objective (missed active bits) never increases, and matches the final recall
    objs = [h["objective"] for h in res.history]
    assert all(b <= a for a, b in zip(objs, objs[1:]))
    assert objs[-1] == pytest.approx((1 - recall) * bits.sum())


def test_balanced_assignment_respects_capacity_and_greedy_order():
    rng = np.random.RandomState(0)
    dist = torch.from_numpy(rng.randint(0, 5, size=(11, 3)).astype(np.float32))
    out = balanced_assign(dist, cap=4).numpy()
    assert np.bincount(out, minlength=3).tolist() == [4, 4, 3]
    # brute-force greedy in index order
    free = list(range(11))
    ref = np.full(11, -1)
    for i in range(3):
        order = sorted(free, key=lambda r: (dist[r, i].item(), r))[:4]
        ref[order] = i
        free = [r for r in free if r not in order]
    np.testing.assert_array_equal(out, ref)


def test_same_seed_is_bit_identical_and_other_seed_differs():
    bits = _random_bits(500, 37, 0.5, seed=5)
    pats = PackedPatterns.from_bits(bits)
    for init in ("random", "kmeans++"):
        a = cluster(pats, 16, density=0.4, seed=7, device="cpu", init=init, max_iter=5)
        b = cluster(pats, 16, density=0.4, seed=7, device="cpu", init=init, max_iter=5)
        c = cluster(pats, 16, density=0.4, seed=8, device="cpu", init=init, max_iter=5)
        assert torch.equal(a.centroids, b.centroids)
        assert torch.equal(a.assignments, b.assignments)
        assert a.history == [dict(h, seconds=a.history[i]["seconds"]) for i, h in enumerate(b.history)]
        assert not torch.equal(a.centroids, c.centroids)


@pytest.mark.parametrize("method,opts", [("apc", {}), ("apc", {"assignment": "balanced"}), ("kmeans", {})])
def test_chunked_equals_in_memory(tmp_path, method, opts):
    bits = _random_bits(600, 37, 0.5, seed=9)
    whole = PackedPatterns.from_bits(bits)
    # the same rows as three "layer" files on disk, read through memory maps
    paths = []
    for i in range(3):
        path = tmp_path / f"L{i:02d}.npy"
        w = PatternWriter(path, 200, 37, {"layer": i})
        w.append(bits[200 * i : 200 * (i + 1)])
        w.close()
        paths.append(path)
    files = PackedPatterns.from_files(paths)
    assert files.n == 600 and np.array_equal(files.bits(), bits)
    kw = dict(method=method, density=0.5, seed=1, device="cpu", max_iter=8, **opts)
    ref = cluster(whole, 10, chunk_size=600, **kw)  # one chunk: in memory
    for pats, chunk in ((files, 600), (files, 150), (whole, 150)):
        if opts.get("assignment") == "balanced" and chunk != 600:
            # capacity is per chunk: compare chunked runs with each other
            ref_b = cluster(whole, 10, chunk_size=150, **kw)
            res = cluster(pats, 10, chunk_size=chunk, **kw)
            assert torch.equal(res.centroids, ref_b.centroids)
            continue
        res = cluster(pats, 10, chunk_size=chunk, block_rows=64, **kw)
        assert torch.equal(res.centroids, ref.centroids)
        assert torch.equal(res.assignments, ref.assignments)
        assert [h["objective"] for h in res.history] == [h["objective"] for h in ref.history]


# --------------------------------------------------------------------------- baselines


def _numpy_kmeans(x, c0, max_iter):
    c = c0.copy()
    prev = None
    for _ in range(max_iter):
        d = (x[:, None, :] != c[None, :, :]).sum(-1)
        a = d.argmin(1)
        dist = d[np.arange(len(x)), a]
        if prev is not None and (a == prev).all():
            break
        counts = np.bincount(a, minlength=len(c))
        new = c.copy()
        for j in range(len(c)):
            if counts[j]:
                new[j] = x[a == j].mean(0) >= 0.5
        empty = np.nonzero(counts == 0)[0]
        if empty.size:
            new[empty] = x[np.argsort(-dist, kind="stable")[: empty.size]]
        c, prev = new, a
    return c, a


def test_hamming_kmeans_matches_numpy_brute_force():
    bits, _ = _planted(k=4, width=37, n=300, noise=0.2, seed=2)
    init = bits[[0, 1, 2, 3, 4]].copy()
    init[4] = init[3]  # a duplicate -> one empty cluster in the first pass
    ref_c, ref_a = _numpy_kmeans(bits, init, max_iter=20)
    res = cluster(PackedPatterns.from_bits(bits), 5, method="kmeans", density=0.5, device="cpu",
                  init_centroids=init, max_iter=20, chunk_size=128)
    np.testing.assert_array_equal(res.centroids.numpy(), ref_c)
    np.testing.assert_array_equal(res.assignments.numpy(), ref_a)
    assert res.history[0]["empty"] == 1


def test_random_and_static_controls():
    bits = _random_bits(400, 37, 0.5, seed=4)
    bits[:, :5] = True  # five always-on neurons
    pats = PackedPatterns.from_bits(bits)
    r1 = cluster(pats, 6, method="random", density=0.3, seed=2)
    r2 = cluster(pats, 6, method="random", density=0.3, seed=2)
    assert torch.equal(r1.centroids, r2.centroids) and r1.iterations == 0
    assert (r1.centroids.sum(1) == density_to_count(0.3, 37)).all()
    assert not torch.equal(r1.centroids[0], r1.centroids[1])
    s = cluster(pats, 1, method="static", density=0.3, device="cpu", chunk_size=64)
    n_keep = density_to_count(0.3, 37)
    freq = bits.mean(0)
    expected = np.argsort(-freq, kind="stable")[:n_keep]
    assert sorted(np.nonzero(s.centroids[0].numpy())[0].tolist()) == sorted(expected.tolist())
    assert s.centroids[0, :5].all()


# --------------------------------------------------------------------------- validation


def test_bad_inputs_raise_clear_errors(tmp_path):
    pats = PackedPatterns.from_bits(_random_bits(20, 13))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        cluster(pats, 0, density=0.5)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        cluster(pats, -3, density=0.5)
    with pytest.raises(ValueError, match=r"k=21 exceeds the number of patterns \(20\)"):
        cluster(pats, 21, density=0.5)
    for bad in (0.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
            cluster(pats, 2, density=bad)
    with pytest.raises(ValueError, match="keeps no position"):
        cluster(pats, 2, density=0.01)
    with pytest.raises(ValueError, match=r"unknown clustering method 'nope'; known: .*apc.*kmeans.*random.*static"):
        cluster(pats, 2, method="nope", density=0.5)
    with pytest.raises(ValueError, match="unknown clustering method"):
        get_method("nope")
    with pytest.raises(ValueError, match="'static' needs k=1"):
        cluster(pats, 2, method="static", density=0.5)
    with pytest.raises(ValueError, match="unknown init"):
        cluster(pats, 2, density=0.5, init="nope", device="cpu")
    with pytest.raises(ValueError, match="blend must be in"):
        cluster(pats, 2, density=0.5, blend=1.0, device="cpu")
    with pytest.raises(ValueError, match="max_iter"):
        cluster(pats, 2, density=0.5, max_iter=0)
    with pytest.raises(TypeError, match="PackedPatterns"):
        cluster(np.zeros((4, 13), bool), 2, density=0.5)
    # a pattern file whose width disagrees with its sidecar
    path = tmp_path / "split" / "gate" / "L00.npy"
    w = PatternWriter(path, 10, 13, {"layer": 0})
    w.append(_random_bits(10, 13))
    w.close()
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["width"] = 37
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"L00\.npy.*disagrees with its sidecar"):
        PackedPatterns.from_files([path])
    # two files of different widths
    p1, p2 = tmp_path / "a" / "L00.npy", tmp_path / "a" / "L01.npy"
    for p, width in ((p1, 13), (p2, 14)):
        w = PatternWriter(p, 5, width, {})
        w.append(_random_bits(5, width))
        w.close()
    with pytest.raises(ValueError, match=r"L01\.npy: width 14 disagrees with .*L00\.npy \(width 13\)"):
        PackedPatterns.from_readers([PatternReader(p1), PatternReader(p2)])


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unsupported device|unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="CUDA is not available"):
            cluster(PackedPatterns.from_bits(_random_bits(10, 13)), 2, density=0.5, device="cuda")


def test_registry_accepts_a_new_method():
    @register("test_first_rows")
    def first_rows(patterns, k, *, density, seed, max_iter, device, chunk_size, **options):
        return ClusterResult(centroids=torch.from_numpy(patterns.bits()[:k]), iterations=0, converged=True)

    assert "test_first_rows" in available_methods()
    bits = _random_bits(10, 13)
    res = cluster(PackedPatterns.from_bits(bits), 3, method="test_first_rows", density=0.5)
    assert np.array_equal(res.centroids.numpy(), bits[:3])
    with pytest.raises(ValueError, match="already registered"):
        register("apc")(first_rows)


# --------------------------------------------------------------------------- data access


def test_packed_patterns_chunks_rows_and_subsample():
    bits = _random_bits(103, 13, seed=6)
    parts = [bits[:40], bits[40:41], bits[41:]]
    pats = PackedPatterns([np.packbits(p, axis=1) for p in parts], 13)
    assert pats.n == 103 and pats.width == 13
    chunks = list(pats.chunks(25, "cpu"))
    assert [c.shape[0] for c in chunks] == [25, 25, 25, 25, 3]
    assert chunks[0].dtype == torch.float32
    np.testing.assert_array_equal(torch.cat(chunks).numpy().astype(bool), bits)
    idx = np.array([102, 0, 40, 41, 39, 40])
    np.testing.assert_array_equal(pats.rows(idx, "cpu", torch.bool).numpy(), bits[idx])
    sub = pats.subsample(30, seed=1)
    again = pats.subsample(30, seed=1)
    assert sub.n == 30 and np.array_equal(sub.bits(), again.bits())
    rows = {r.tobytes(): i for i, r in enumerate(np.packbits(bits, axis=1))}
    picked = [rows[r.tobytes()] for r in np.packbits(sub.bits(), axis=1)]
    assert picked == sorted(picked)  # order kept (rows are distinct at this size)
    assert pats.subsample(500, seed=1) is pats
    with pytest.raises(ValueError, match="bytes, expected 2 for width 13"):
        PackedPatterns([np.zeros((3, 3), np.uint8)], 13)


# --------------------------------------------------------------------------- centroid files


@pytest.mark.parametrize("width", [13, 37])
def test_centroid_save_load_round_trip(tmp_path, width):
    bits = np.random.RandomState(0).rand(3, 5, width) < 0.5
    side = save_centroids(tmp_path / "c" / "gate", bits, {"method": "apc", "scope": "per_layer"})
    assert side["width"] == width and side["k"] == 5 and side["n_sets"] == 3
    assert side["density"] == pytest.approx(bits.mean())
    loaded, meta = load_centroids(tmp_path / "c" / "gate.npy")
    assert loaded.dtype == bool and np.array_equal(loaded, bits)
    assert meta["method"] == "apc" and meta["scope"] == "per_layer"
    assert np.load(tmp_path / "c" / "gate.npy").shape == (3, 5, (width + 7) // 8)
    # pooled: a (K, width) set is stored as L = 1
    save_centroids(tmp_path / "pooled.npy", torch.from_numpy(bits[0]), {})
    one, meta1 = load_centroids(tmp_path / "pooled.npy")
    assert one.shape == (1, 5, width) and meta1["n_sets"] == 1


def test_centroid_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing file"):
        load_centroids(tmp_path / "absent.npy")
    bits = np.random.RandomState(1).rand(2, 4, 13) < 0.5
    save_centroids(tmp_path / "c.npy", bits, {})
    sidecar = tmp_path / "c.json"
    meta = json.loads(sidecar.read_text())
    meta["width"] = 20
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="disagrees with its sidecar"):
        load_centroids(tmp_path / "c.npy")
    meta["width"] = 12  # same byte count, but set padding bits reveal the mismatch
    sidecar.write_text(json.dumps(meta))
    bits[:, :, 12] = True
    save_centroids(tmp_path / "d.npy", bits, {})
    (tmp_path / "d.json").write_text(json.dumps(dict(json.loads((tmp_path / "d.json").read_text()), width=12)))
    with pytest.raises(ValueError, match="padding bits"):
        load_centroids(tmp_path / "d.npy")
    with pytest.raises(ValueError, match="must be"):
        save_centroids(tmp_path / "e.npy", np.zeros(13, bool), {})


# --------------------------------------------------------------------------- building blocks


def test_building_blocks_tie_rules():
    from apc.clustering.common import top_n_mask
    from apc.clustering.engine import worst_covered
    from apc.clustering.kmeans import majority_update

    # majority vote: a mean of exactly 0.5 is a 1; an empty cluster keeps its previous centroid
    sums = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    prev = torch.tensor([[False, False, True], [True, False, True]])
    new = majority_update(sums, torch.tensor([4, 0]), prev)
    assert new.tolist() == [[False, True, False], [True, False, True]]
    # worst-covered: largest distance first, ties -> lowest index
    dist = torch.tensor([3.0, 5.0, 1.0, 5.0, 5.0, 0.0])
    assert worst_covered(dist, 4).tolist() == [1, 3, 4, 0]
    # top-n: exact count, ties -> lowest position, also on long rows
    score = torch.zeros(3, 20000, dtype=torch.float64)
    score[1, 7] = 1.0
    score[2, 19999] = 0.5
    mask = top_n_mask(score, 5000)
    assert (mask.sum(1) == 5000).all()
    assert mask[0, :5000].all() and not mask[0, 5000:].any()
    assert mask[1, 7] and mask[1, :4999].all() and mask[1, 4999]
    assert mask[2, 19999] and mask[2, :4999].all() and not mask[2, 4999:19999].any()


def test_balanced_apc_fills_each_chunk_within_capacity():
    bits, _ = _planted(k=4, width=37, n=400, noise=0.1, seed=3)
    bits[:150] = bits[0]  # a crowd that argmin would give to one centroid
    res = cluster(PackedPatterns.from_bits(bits), 8, method="apc_balanced", density=0.5, seed=0,
                  device="cpu", chunk_size=100, max_iter=4)
    a = res.assignments.numpy()
    for s in range(0, 400, 100):
        counts = np.bincount(a[s : s + 100], minlength=8)
        assert counts.max() <= 13 and counts.sum() == 100  # ceil(100 / 8) = 13
    assert res.method == "apc_balanced"


@pytest.mark.parametrize("width", [13, 37, 64])
def test_unpack_to_float_matches_numpy(width):
    from apc.extraction.patterns import unpack_torch

    bits = _random_bits(21, width, seed=width)
    packed = torch.from_numpy(np.packbits(bits, axis=1))
    for dtype in (torch.float32, torch.bfloat16, torch.bool):
        out = unpack_torch(packed, width, dtype)
        assert out.dtype == dtype and out.shape == (21, width)
        np.testing.assert_array_equal(out.to(torch.bool).numpy(), bits)
    assert unpack_torch(packed[:0], width, torch.float32).shape == (0, width)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_bit_for_bit():
    from apc.evaluation.metrics import coverage_sums

    bits, _ = _planted(k=6, width=203, n=3000, noise=0.1, seed=4)
    pats = PackedPatterns.from_bits(bits)
    runs = [("apc", {}), ("apc", {"init": "kmeans++", "blend": 0.3}), ("apc_balanced", {}), ("kmeans", {}),
            ("kmeans_capped", {})]
    for method, opts in runs:
        kw = dict(method=method, density=0.4, seed=3, chunk_size=700, max_iter=6, **opts)
        cpu = cluster(pats, 12, device="cpu", **kw)
        gpu = cluster(pats, 12, device="cuda", **kw)
        assert torch.equal(cpu.centroids, gpu.centroids), method
        assert torch.equal(cpu.assignments, gpu.assignments), method
        if method == "apc":
            bf16 = cluster(pats, 12, device="cuda", dtype="bfloat16", **kw)
            assert torch.equal(cpu.centroids, bf16.centroids)
        on_gpu = cluster(pats.to("cuda"), 12, device="cuda", **kw)  # patterns cached on the GPU
        assert torch.equal(cpu.centroids, on_gpu.centroids)
    c = cluster(pats, 12, density=0.4, seed=0, device="cpu", max_iter=3).centroids
    assert coverage_sums(pats, c, device="cpu") == coverage_sums(pats, c, device="cuda", chunk_size=1000)


def test_accumulate_methods_agree():
    from apc.clustering.engine import accumulate_sums

    rng = np.random.RandomState(3)
    x = torch.from_numpy(rng.rand(50, 13) < 0.5).float()
    idx = torch.from_numpy(rng.choice([0, 2, 5], size=50))  # clusters 1, 3, 4 stay empty
    ref = torch.zeros(6, 13)
    for i, k in enumerate(idx.tolist()):
        ref[k] += x[i]
    for method in ("index_add", "onehot", "sorted"):
        sums = torch.zeros(6, 13)
        accumulate_sums(sums, idx, x, method)
        assert torch.equal(sums, ref), method
    bits = _random_bits(400, 37, seed=2)
    pats = PackedPatterns.from_bits(bits)
    runs = [cluster(pats, 9, density=0.5, seed=1, device="cpu", max_iter=5, accumulate=m) for m in
            ("index_add", "onehot", "sorted")]
    assert all(torch.equal(r.centroids, runs[0].centroids) for r in runs)
    with pytest.raises(ValueError, match="unknown accumulate method .nope.; known: auto"):
        cluster(pats, 9, density=0.5, device="cpu", accumulate="nope")


def test_float_top_n_by_selection_equals_the_stable_sort():
    """The float route (k-th value, then ties from the lowest position) keeps exactly the stable
    descending sort's first n, on rows full of ties, signed zeros and a NaN row."""
    from apc.clustering.common import top_n_mask

    def by_sort(score, n):
        order = torch.argsort(score, dim=1, descending=True, stable=True)[:, :n]
        return torch.zeros(score.shape, dtype=torch.bool).scatter_(1, order, True)

    g = torch.Generator().manual_seed(0)
    for trial in range(60):
        rows, width = torch.randint(1, 30, (2,), generator=g).tolist()
        step = torch.randint(1, 4, (1,), generator=g).item()
        score = (torch.randn(rows, width, generator=g, dtype=torch.float64 if trial % 2 else torch.float32)
                 * step).round() / step  # coarse values: many ties at the n-th
        score[score == 0] = -0.0 if trial % 3 == 0 else 0.0
        if trial % 7 == 0:
            score[0, 0] = float("nan")  # the sort route
        for n in {1, width, max(1, width // 2), max(1, width // 3)}:
            mask = top_n_mask(score, n)
            assert torch.equal(mask, by_sort(score, n)) and (mask.sum(dim=1) == n).all()
