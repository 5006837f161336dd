import numpy as np
import pytest

from apc.clustering.sources import layer_files, pooled, sample_layer
from apc.extraction.patterns import PatternWriter


@pytest.fixture
def store(tmp_path):
    rng = np.random.default_rng(0)
    bits = []
    for layer in range(3):
        b = rng.random((50, 13)) < 0.5
        w = PatternWriter(tmp_path / "train" / "gate" / f"L{layer:02d}.npy", 50, 13, {"layer": layer})
        w.append(b)
        w.close()
        bits.append(b)
    return tmp_path, bits


def test_pooled_streams_every_layer_in_order(store):
    root, bits = store
    files = layer_files(root, "train", "gate")
    streamed = pooled(files, None, 0)
    assert streamed.n == 150 and np.array_equal(streamed.bits(), np.concatenate(bits))
    assert np.array_equal(pooled(files, 10_000, 0).bits(), streamed.bits())  # a cap above n keeps everything


def test_per_layer_sample_is_seeded_ordered_and_capped(store):
    root, bits = store
    path = layer_files(root, "train", "gate", [1])[0]
    a, b, c = sample_layer(path, 20, 7), sample_layer(path, 20, 7), sample_layer(path, 20, 8)
    assert a.n == 20 and np.array_equal(a.bits(), b.bits()) and not np.array_equal(a.bits(), c.bits())
    rows = {tuple(r) for r in bits[1]}
    assert all(tuple(r) in rows for r in a.bits())
    assert pooled(layer_files(root, "train", "gate"), 20, 0).n == 60


def test_missing_layer_file_is_named(store):
    root, _ = store
    with pytest.raises(FileNotFoundError, match="L05.npy"):
        layer_files(root, "train", "gate", [0, 5])
