"""Tests of apc.metrics: oracle nearest-centroid coverage, streamed and additive."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from apc.clustering import PackedPatterns
from apc.evaluation.metrics import CoverageSums, coverage_sums, evaluate_centroids, metrics_from_sums


def _bits(rows):
    return np.array([[c == "1" for c in r] for r in rows], dtype=bool)


def test_hand_computed_example():
    x = _bits(["101100", "111000", "000011", "110001"])
    c = _bits(["011010", "110001"])
    # x0: overlaps 1, 1 -> tie -> c0 (hits 1, |c| 3); x1: 2, 2 -> c0 (2, 3);
    # x2: 1, 1 -> c0 (1, 3); x3: 1, 3 -> c1 (3, 3)
    sums, assign = coverage_sums(PackedPatterns.from_bits(x), c, device="cpu", return_assignments=True)
    assert assign.tolist() == [0, 0, 0, 1]
    assert sums == CoverageSums(n_tokens=4, cells=24, active=11, hits=7, centroid_ones=12)
    m = metrics_from_sums(sums)
    assert m["n_tokens"] == 4
    assert m["recall"] == pytest.approx(7 / 11) and m["paper_precision"] == m["recall"]
    assert m["precision"] == pytest.approx(7 / 12)
    assert m["f1"] == pytest.approx(2 * (7 / 11) * (7 / 12) / (7 / 11 + 7 / 12))
    assert m["centroid_density"] == pytest.approx(0.5)
    assert m["compute_share"] == m["centroid_density"] == m["random_recall"]
    assert m["data_density"] == pytest.approx(11 / 24)


def test_all_ones_centroid_has_recall_one():
    bits = np.random.RandomState(0).rand(200, 37) < 0.3
    c = np.zeros((3, 37), bool)
    c[1] = True
    out = evaluate_centroids(PackedPatterns.from_bits(bits), c, device="cpu", chunk_size=64)
    assert out["recall"] == 1.0
    assert out["precision"] == pytest.approx(bits.mean())
    assert out["centroid_density"] == 1.0
    assert out["active"] == bits.sum() and out["hits"] == bits.sum()


def test_streaming_matches_brute_force_for_any_chunk():
    rng = np.random.RandomState(1)
    bits = rng.rand(301, 13) < 0.5
    c = torch.from_numpy(rng.rand(7, 13) < 0.5)
    ov = bits.astype(np.int64) @ c.numpy().astype(np.int64).T
    a = ov.argmax(1)
    expected = CoverageSums(301, 301 * 13, int(bits.sum()), int(ov.max(1).sum()), int(c.numpy()[a].sum()))
    pats = PackedPatterns.from_bits(bits)
    for chunk in (1, 50, 301, 10_000):
        assert coverage_sums(pats, c, device="cpu", chunk_size=chunk) == expected


def test_pooled_total_equals_combination_of_layers():
    rng = np.random.RandomState(2)
    layers = [rng.rand(n, 37) < p for n, p in ((120, 0.2), (80, 0.5), (33, 0.7))]
    c = rng.rand(5, 37) < 0.5
    per_layer = [coverage_sums(PackedPatterns.from_bits(b), c, device="cpu", chunk_size=50) for b in layers]
    pooled = coverage_sums(
        PackedPatterns([np.packbits(b, axis=1) for b in layers], 37), c, device="cpu", chunk_size=50
    )
    assert sum(per_layer) == pooled
    assert per_layer[0] + per_layer[1] + per_layer[2] == pooled
    assert metrics_from_sums(sum(per_layer, CoverageSums())) == metrics_from_sums(pooled)
    assert CoverageSums.from_dict(pooled.as_dict()) == pooled
    # rates of the pool are token-weighted, not the mean of the layer rates
    rates = [metrics_from_sums(s)["recall"] for s in per_layer]
    assert metrics_from_sums(pooled)["recall"] != pytest.approx(np.mean(rates))


def test_bad_centroid_shape():
    pats = PackedPatterns.from_bits(np.zeros((4, 13), bool))
    with pytest.raises(ValueError, match=r"centroids must be \(K, 13\)"):
        coverage_sums(pats, np.zeros((2, 12), bool), device="cpu")
    m = metrics_from_sums(coverage_sums(pats, np.ones((1, 13), bool), device="cpu"))
    assert np.isnan(m["recall"])  # no active bit at all
