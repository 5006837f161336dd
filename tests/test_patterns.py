import numpy as np
import pytest
import torch

from apc.extraction.patterns import PatternReader, PatternWriter, pack, pack_torch, packed_width, unpack, unpack_torch


@pytest.mark.parametrize("width", [1, 7, 13, 44, 1537])
def test_pack_roundtrip_odd_widths(width):
    rng = np.random.default_rng(width)
    bits = rng.random((37, width)) < 0.5
    packed = pack(bits)
    assert packed.shape == (37, packed_width(width)) and packed.dtype == np.uint8
    assert np.array_equal(unpack(packed, width), bits)
    t = torch.from_numpy(bits)
    assert np.array_equal(pack_torch(t).numpy(), packed)  # torch packing == numpy packbits order
    assert torch.equal(unpack_torch(torch.from_numpy(packed), width), t)


def test_unpack_rejects_wrong_width():
    with pytest.raises(ValueError, match="expected 2 for width 13"):
        unpack(np.zeros((2, 3), np.uint8), 13)


def test_writer_reader_stream_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    width, chunks = 29, [rng.random((n, 29)) < 0.4 for n in (5, 11, 3)]
    w = PatternWriter(tmp_path / "L00.npy", 19, width, {"layer": 0, "projection": "gate"})
    for c in chunks:
        w.append(c if len(c) != 11 else torch.from_numpy(c))
    assert not (tmp_path / "L00.npy").exists()  # nothing at the final path before close
    meta = w.close()
    allbits = np.concatenate(chunks)
    assert meta["n_tokens"] == 19 and meta["width"] == width
    assert meta["density"] == pytest.approx(allbits.mean())
    r = PatternReader(tmp_path / "L00.npy")
    got = list(r.chunks(4))
    assert [len(g) for g in got] == [4, 4, 4, 4, 3]
    assert np.array_equal(unpack(np.concatenate(got), width), allbits)
    assert np.array_equal(r.bits(), allbits)
    assert not list(tmp_path.glob(".*partial*"))


def test_writer_refuses_short_file_and_leaves_nothing(tmp_path):
    w = PatternWriter(tmp_path / "L01.npy", 10, 9, {})
    w.append(np.ones((4, 9), bool))
    with pytest.raises(ValueError, match="wrote 4 of 10"):
        w.close()
    assert list(tmp_path.iterdir()) == []


def test_reader_detects_sidecar_mismatch(tmp_path):
    w = PatternWriter(tmp_path / "L00.npy", 3, 16, {})
    w.append(np.zeros((3, 16), bool))
    w.close()
    side = tmp_path / "L00.json"
    side.write_text(side.read_text().replace('"width": 16', '"width": 40'))
    with pytest.raises(ValueError, match="disagrees with its sidecar"):
        PatternReader(tmp_path / "L00.npy")


def test_reader_reports_corrupt_file(tmp_path):
    w = PatternWriter(tmp_path / "L00.npy", 3, 16, {})
    w.append(np.zeros((3, 16), bool))
    w.close()
    (tmp_path / "L00.npy").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt or unreadable"):
        PatternReader(tmp_path / "L00.npy")
