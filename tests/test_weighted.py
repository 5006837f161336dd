"""Magnitude store, weighted APC, product APC and mass recall."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apc.extraction.capture import ProjectionCapture
from apc.clustering.sources import sample_index, sample_layer, weighted_layer, weighted_pooled
from apc.clustering import (
    PackedPatterns,
    WeightedPatterns,
    activation_aware_distance,
    cluster,
    product_masks,
)
from apc.clustering.engine import assign_pass
from apc.clustering.product import group_counts, neuron_groups
from apc.extraction.extract import calibrate_thresholds, extract_patterns
from apc.extraction.magnitudes import MagnitudeCodec, MagnitudeReader, MagnitudeWriter, down_column_norms, magnitude_path
from apc.perplexity.masking import install_interventions
from apc.evaluation.metrics import coverage_sums, metrics_from_sums
from apc.extraction.patterns import pattern_path


def _codes_set(rng, n, width, reference):
    """Two arrays of random |x| stored as codes (different references), with their bits and true values."""
    codecs = [MagnitudeCodec(reference), MagnitudeCodec(reference * 3)]
    arrays, codes, truth = [], [], []
    for i, codec in enumerate(codecs):
        x = rng.lognormal(0.0, 1.0, size=(n + i * 7, width)).astype(np.float32) * reference
        arrays.append(np.packbits(x >= reference, axis=1))
        codes.append(codec.encode(torch.from_numpy(x)).numpy())
        truth.append(codec.decode(codes[-1]).numpy())
    pats = WeightedPatterns(arrays, width, codes, tables=[c.table() for c in codecs])
    return pats, np.concatenate(truth)


# --------------------------------------------------------------------------- magnitude store


@pytest.mark.parametrize("reference", [0.01, 2.5])
def test_magnitude_store_round_trips_within_its_bound(tmp_path, reference):
    rng = np.random.RandomState(0)
    codec = MagnitudeCodec(reference)
    x = (rng.randn(300, 29) * reference * np.exp(rng.randn(300, 29) * 3)).astype(np.float32)
    x[0, :3] = [0.0, codec.lo * 0.5, codec.hi * 4]  # zero, below the range, above it
    path = tmp_path / "L03.npy"
    w = MagnitudeWriter(path, 300, 29, {"layer": 3}, reference=reference)
    for s in range(0, 300, 64):
        w.append(torch.from_numpy(x[s : s + 64]))
    meta = w.close()
    r = MagnitudeReader(path)
    assert r.meta["layer"] == 3 and meta["clipped"] == r.meta["clipped"] >= 1
    assert r.nbytes == path.stat().st_size and r.nbytes < 300 * 29 + 200  # one byte per value plus the header
    got = np.concatenate(list(r.chunks(70)))
    np.testing.assert_array_equal(got, r.values())
    a = np.abs(x)
    inside = (a >= codec.lo) & (a <= codec.hi)
    rel = np.abs(got[inside] - a[inside]) / a[inside]
    assert rel.max() <= codec.max_relative_error + 1e-5
    assert rel.max() > 0.5 * codec.max_relative_error  # the bound is tight, not loose
    assert codec.max_relative_error < 0.034
    assert np.all(got[a < codec.lo] == 0)
    assert got[0, 2] <= codec.hi and meta["max_abs"] == pytest.approx(float(a.max()))


def test_magnitude_writer_refuses_short_file(tmp_path):
    w = MagnitudeWriter(tmp_path / "L00.npy", 10, 5, {}, reference=1.0)
    w.append(torch.ones(4, 5))
    with pytest.raises(ValueError, match="wrote 4 of 10"):
        w.close()
    assert not list(tmp_path.glob("*.npy")) and not list(tmp_path.glob(".*"))
    with pytest.raises(ValueError, match="reference"):
        MagnitudeCodec(0.0)


def test_extraction_stores_magnitudes_row_aligned_with_patterns(tmp_path, tiny_llama):
    windows = torch.randint(1, 128, (3, 9), generator=torch.Generator().manual_seed(1))
    th = calibrate_thresholds(tiny_llama, windows, ["gate", "down_in"], 0.5, skip_first=True)
    summary = extract_patterns(tiny_llama, windows, th, ["gate", "down_in"], tmp_path, "train", {"model": "tiny"},
                               skip_first=True, magnitudes=["down_in"])
    assert summary["magnitude_projections"] == ["down_in"]
    files = [magnitude_path(tmp_path, "train", "down_in", l) for l in range(3)]
    assert summary["magnitude_bytes"] == sum(f.stat().st_size for f in files)
    assert not magnitude_path(tmp_path, "train", "gate", 0).exists()
    seen = {}
    with ProjectionCapture(tiny_llama, ["down_in"], lambda p, l, x: seen.setdefault(l, []).append(x.clone()),
                           skip_first=True), torch.inference_mode():
        for w in windows:
            tiny_llama(w[None])
    for l in range(3):
        a = torch.cat(seen[l]).abs().numpy()
        r = MagnitudeReader(files[l])
        assert r.n_tokens == 3 * 8 == a.shape[0]
        rel = np.abs(r.values() - a) / np.maximum(a, 1e-30)
        ok = a >= r.codec.lo
        assert rel[ok].max() <= r.codec.max_relative_error + 1e-5
        assert r.meta["reference"] == pytest.approx(th["projections"]["down_in"][l]["threshold"])
    with pytest.raises(ValueError, match="magnitudes"):
        extract_patterns(tiny_llama, windows, th, ["gate"], tmp_path / "x", "train", {}, skip_first=True,
                         magnitudes=["down_in"])


def test_down_column_norms(tiny_llama):
    norms = down_column_norms(tiny_llama)
    assert norms.shape == (3, 44) and norms.dtype == np.float32
    w = tiny_llama.model.layers[2].mlp.down_proj.weight.detach()
    np.testing.assert_allclose(norms[2], np.sqrt((w.numpy() ** 2).sum(0)), rtol=1e-6)


# --------------------------------------------------------------------------- weighted distance and APC


@pytest.mark.parametrize("width", [13, 37])
def test_weighted_distance_equals_brute_force_sum(width):
    rng = np.random.RandomState(width)
    pats, w = _codes_set(rng, 50, width, 0.2)
    c = torch.from_numpy(rng.rand(6, width) < 0.5)
    brute = (w[:, None, :] * ~c.numpy()[None]).sum(-1)  # weight each centroid misses
    np.testing.assert_allclose(activation_aware_distance(torch.from_numpy(w), c.float()).numpy(), brute, rtol=1e-5)
    # streamed: chunks of 16 rows cross the boundary between the two arrays (different decode tables)
    assign = torch.full((pats.n,), -1, dtype=torch.int64)
    dist = torch.zeros(pats.n)
    res = assign_pass(pats, c, assign, dist, kind="activation", chunk_size=16, block_rows=5, dtype=torch.float32)
    np.testing.assert_array_equal(assign.numpy(), brute.argmin(1))
    np.testing.assert_allclose(dist.numpy(), brute.min(1), rtol=1e-5)
    members = np.stack([w[assign.numpy() == k].sum(0) for k in range(6)])
    np.testing.assert_allclose(res.sums.numpy(), members, rtol=1e-5)


def _planted(n=900, width=45, k=6, seed=0):
    rng = np.random.RandomState(seed)
    masks = rng.rand(k, width) < 0.5
    return masks[rng.randint(k, size=n)] ^ (rng.rand(n, width) < 0.1)


@pytest.mark.parametrize("init", ["random", "kmeans++"])
def test_weights_equal_to_the_bits_give_binary_apc(init):
    bits = _planted()
    opts = dict(density=0.4, seed=3, max_iter=8, device="cpu", chunk_size=128, init=init)
    binary = cluster(PackedPatterns.from_bits(bits), 12, method="apc", **opts)
    weighted = cluster(WeightedPatterns.from_bits(bits, bits.astype(np.float32)), 12, method="apc_weighted", **opts)
    assert binary.iterations > 1
    assert torch.equal(weighted.centroids, binary.centroids)
    assert torch.equal(weighted.assignments, binary.assignments)
    assert weighted.method == "apc_weighted" and weighted.options["weighting"] == "magnitude"


def _heavy_few(n=3000, width=64, seed=0):
    """Light neurons: often active, small.  Eight heavy neurons: rarely active, large, most of the mass."""
    rng = np.random.RandomState(seed)
    heavy = np.zeros(width, dtype=bool)
    heavy[rng.choice(width, 8, replace=False)] = True
    on = rng.rand(n, width) < np.where(heavy, 0.3, 0.6)
    mag = np.where(on, rng.uniform(1, 2, (n, width)), rng.uniform(0, 0.5, (n, width)))
    mag = np.where(heavy & on, mag * 20, mag).astype(np.float32)
    return on, mag


def test_weighted_apc_keeps_more_mass_than_binary_apc():
    bits, mag = _heavy_few()
    data = WeightedPatterns.from_bits(bits, mag)
    opts = dict(density=0.25, seed=0, max_iter=10, device="cpu", chunk_size=512)
    binary = cluster(PackedPatterns.from_bits(bits), 4, method="apc", **opts)
    weighted = cluster(data, 4, method="apc_weighted", **opts)
    m_bin = metrics_from_sums(coverage_sums(data, binary.centroids, device="cpu"))
    m_w = metrics_from_sums(coverage_sums(data, weighted.centroids, assign_by="weights", device="cpu"))
    assert m_w["centroid_density"] == m_bin["centroid_density"] == 0.25
    assert m_w["mass_recall"] > m_bin["mass_recall"] + 0.2
    assert m_bin["recall"] > m_w["recall"]  # binary APC wins on the count it optimises
    # brute force of the metric for the binary cell (pattern assignment)
    c = binary.centroids.numpy()
    a = (bits.astype(int) @ c.T.astype(int)).argmax(1)
    assert m_bin["mass_recall"] == pytest.approx((mag * c[a]).sum() / mag.sum(), rel=1e-6)


def test_binary_tables_have_no_mass_recall():
    bits = _planted()
    m = metrics_from_sums(coverage_sums(PackedPatterns.from_bits(bits), bits[:4], device="cpu"))
    assert "mass_recall" not in m and m["recall"] > 0


def test_weighted_cells_from_the_store(tmp_path, tiny_llama):
    windows = torch.randint(1, 128, (4, 9), generator=torch.Generator().manual_seed(2))
    th = calibrate_thresholds(tiny_llama, windows, ["up", "down_in"], 0.5, skip_first=True)
    extract_patterns(tiny_llama, windows, th, ["up", "down_in"], tmp_path, "train", {}, skip_first=True,
                     magnitudes=["down_in"])
    norms = down_column_norms(tiny_llama)
    path = pattern_path(tmp_path, "train", "down_in", 1)
    mag = weighted_layer(path, 20, 7)
    out = weighted_layer(path, 20, 7, weighting="output", column_norms=norms)
    assert mag.bits().tolist() == sample_layer(path, 20, 7).bits().tolist()  # same sampled rows
    raw = MagnitudeReader(magnitude_path(tmp_path, "train", "down_in", 1)).values()
    w_mag = torch.cat(list(mag.weight_chunks(6)))
    torch.testing.assert_close(torch.cat(list(out.weight_chunks(6))), w_mag * torch.from_numpy(norms[1]))
    torch.testing.assert_close(w_mag, torch.from_numpy(raw[sample_index(32, 20, 7)]))
    pool = weighted_pooled([pattern_path(tmp_path, "train", "down_in", l) for l in range(3)], None, 0)
    assert pool.n == 3 * 32 and torch.equal(pool.weight_range(32, 64), torch.from_numpy(
        MagnitudeReader(magnitude_path(tmp_path, "train", "down_in", 1)).values()))
    res = cluster(out, 4, method="apc_weighted", weighting="output", density=0.5, device="cpu", max_iter=3)
    assert res.centroids.sum(1).tolist() == [22] * 4


# --------------------------------------------------------------------------- product APC


@pytest.mark.parametrize("grouping", ["contiguous", "coactivation"])
def test_product_masks_have_exactly_the_capped_density(grouping):
    bits = _planted(n=600, width=30, k=5)
    res = cluster(PackedPatterns.from_bits(bits), 4, method="apc_product", groups=3, grouping=grouping,
                  density=0.55, seed=1, max_iter=5, device="cpu")
    n_keep = 17  # round(0.55 * 30)
    assert res.centroids.shape == (12, 30) and group_counts(n_keep, 3) == [6, 6, 5]
    labels = res.group_labels
    assert torch.bincount(labels).tolist() == [10, 10, 10]
    for g in range(3):  # group g's centroids live on group g's neurons only
        assert not res.centroids[g * 4 : (g + 1) * 4][:, labels != g].any()
    masks = product_masks(torch.from_numpy(bits), res.centroids, 3)
    assert masks.sum(1).eq(n_keep).all()
    # per-group nearest is the nearest of all 4**3 combinations
    x = torch.from_numpy(bits).float()
    c = res.centroids.float().view(3, 4, 30)
    best = sum((x @ c[g].t()).max(1).values for g in range(3))
    assert torch.equal((x * masks).sum(1), best)
    sums = coverage_sums(PackedPatterns.from_bits(bits), res.centroids, groups=3, device="cpu")
    assert sums.centroid_ones == 600 * n_keep and sums.hits == int(best.sum())
    assert res.assignments.shape == (600, 3)
    for g in range(3):
        assert res.assignments[:, g].min() >= g * 4 and res.assignments[:, g].max() < (g + 1) * 4


def test_coactivation_groups_find_planted_blocks():
    rng = np.random.RandomState(0)
    # neurons 0, 2, 4, ... fire together, and so do 1, 3, 5, ...: the grouping must find them
    z = rng.rand(2000, 2) < 0.5
    bits = np.tile(z, 12) ^ (rng.rand(2000, 24) < 0.05)
    labels = neuron_groups(PackedPatterns.from_bits(bits), 2, "coactivation")
    assert labels[0::2].unique().numel() == 1 and labels[1::2].unique().numel() == 1 and labels[0] != labels[1]
    assert neuron_groups(PackedPatterns.from_bits(bits), 2, "contiguous").tolist() == [0] * 12 + [1] * 12


def test_product_cell_in_centroid_only_mode(tiny_llama):
    windows = torch.randint(1, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(4)
    cents = torch.zeros(1, 6, 44, dtype=torch.bool)
    for grp in range(2):  # 3 centroids per group of 22 neurons, 11 ones each
        for r in range(3):
            cols = grp * 22 + torch.randperm(22, generator=g)[:11]
            cents[0, grp * 3 + r, cols] = True
    thr = {"down_in": [0.0] * 3}
    with install_interventions(tiny_llama, "centroid_only", projections=["down_in"], thresholds=thr,
                               centroids={"down_in": cents}, groups={"down_in": 2},
                               skip_first_position=True) as h:
        tiny_llama(windows)
    assert h.kept_fraction()["down_in"] == pytest.approx(0.5)
    with install_interventions(tiny_llama, "centroid_only", projections=["down_in"], thresholds=thr,
                               centroids={"down_in": cents}, assign_weights={"down_in": None},
                               groups={"down_in": 2}, skip_first_position=True) as h:
        tiny_llama(windows)
    assert h.kept_fraction()["down_in"] == pytest.approx(0.5)


def test_weighted_oracle_in_masking_picks_least_missed_weight(tiny_llama):
    windows = torch.randint(1, 128, (1, 9), generator=torch.Generator().manual_seed(5))
    cents = torch.rand(1, 5, 44, generator=torch.Generator().manual_seed(6)) < 0.5
    scale = np.abs(np.random.RandomState(0).randn(3, 44)).astype(np.float32)
    downs = [tiny_llama.model.layers[l].mlp.down_proj for l in range(3)]
    raw, post = {}, {}

    def keep_in(store, layer):
        def hook(module, args):
            store[layer] = args[0][0].clone()  # returns None: the input is left as it is
        return hook

    hooks = [d.register_forward_pre_hook(keep_in(raw, l)) for l, d in enumerate(downs)]  # runs first: raw inputs
    with install_interventions(tiny_llama, "centroid_only", projections=["down_in"], thresholds={"down_in": [0] * 3},
                               centroids={"down_in": cents}, assign_weights={"down_in": scale},
                               skip_first_position=False):
        hooks += [d.register_forward_pre_hook(keep_in(post, l)) for l, d in enumerate(downs)]  # masked inputs
        with torch.inference_mode():
            tiny_llama(windows)
    for h in hooks:
        h.remove()
    for l in range(3):
        x, c = raw[l], cents[0]
        w = x.abs() * torch.from_numpy(scale[l])
        a = (w[:, None, :] * ~c[None]).sum(-1).argmin(1)
        assert a.unique().numel() > 1
        assert torch.equal(post[l], x.masked_fill(~c[a], 0))


# --------------------------------------------------------------------------- bad inputs


def test_bad_inputs_name_the_argument(tmp_path, tiny_llama):
    bits = _planted(n=200, width=30)
    plain = PackedPatterns.from_bits(bits)
    with pytest.raises(ValueError, match="apc_weighted needs weights"):
        cluster(plain, 4, method="apc_weighted", density=0.5, device="cpu")
    weighted = WeightedPatterns.from_bits(bits, bits.astype(np.float32))
    with pytest.raises(ValueError, match="weighting='output'"):
        cluster(weighted, 4, method="apc_weighted", weighting="output", density=0.5, device="cpu")
    with pytest.raises(ValueError, match="weighting must be one of"):
        cluster(weighted, 4, method="apc_weighted", weighting="mass", density=0.5, device="cpu")
    with pytest.raises(ValueError, match="groups=4 does not divide the layer width 30"):
        cluster(plain, 4, method="apc_product", groups=4, density=0.5, device="cpu")
    with pytest.raises(ValueError, match="grouping must be one of"):
        cluster(plain, 4, method="apc_product", groups=2, grouping="spectral", density=0.5, device="cpu")
    for method, data in (("apc_weighted", weighted), ("apc_product", plain)):
        for density in (0.0, 1.5, -0.1):
            with pytest.raises(ValueError, match=r"density must be in \(0, 1\]"):
                cluster(data, 4, method=method, density=density, device="cpu")
    with pytest.raises(ValueError, match="assign_by='weights' needs weights"):
        coverage_sums(plain, bits[:3], assign_by="weights", device="cpu")
    with pytest.raises(ValueError, match="weights for in-memory bits: shape"):
        WeightedPatterns.from_bits(bits, np.ones((5, 30)))
    # weights missing for a projection in the store
    windows = torch.randint(1, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    th = calibrate_thresholds(tiny_llama, windows, ["gate"], 0.5, skip_first=True)
    extract_patterns(tiny_llama, windows, th, ["gate"], tmp_path, "train", {}, skip_first=True)
    with pytest.raises(FileNotFoundError, match="no magnitudes stored for projection 'gate'"):
        weighted_layer(pattern_path(tmp_path, "train", "gate", 0), None, 0)
