"""apc.extraction.gguf_table: the GGUF header and tensor table, against the gguf package's own reader."""

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from apc.extraction.gguf_table import read_table  # noqa: E402


def _write(path, alignment=None):
    w = gguf.GGUFWriter(str(path), "llama")
    if alignment:
        w.add_custom_alignment(alignment)
    w.add_uint32("llama.block_count", 2)
    w.add_float32("x.scale", 0.5)
    w.add_bool("x.flag", True)
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc", "<s>"])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.0, -2.0, -3.0])
    w.add_tensor("w.0", np.arange(24, dtype=np.float32).reshape(4, 6))
    w.add_tensor("w.1", np.ones(10, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize("alignment", [None, 64])
def test_table_matches_the_gguf_reader(tmp_path, alignment):
    path = _write(tmp_path / "t.gguf", alignment)
    table, ref = read_table(path), gguf.GGUFReader(path)
    assert table.data_start == ref.data_offset and len(table.tensors) == len(ref.tensors) == 2
    for (name, shape, ggml_type, offset), t in zip(table.tensors, ref.tensors):
        assert name == t.name and ggml_type == int(t.tensor_type)
        assert table.data_start + offset == t.data_offset and tuple(shape) == tuple(int(d) for d in t.shape)
    assert table.data_end == max(t.data_offset + t.n_bytes for t in ref.tensors)
    assert table.n_kv == len(ref.fields) - 3  # the reader also lists the header's three fields


def test_truncations_and_a_bad_magic_raise(tmp_path):
    data = _write(tmp_path / "t.gguf").read_bytes()
    bad = tmp_path / "bad.gguf"
    table = read_table(tmp_path / "t.gguf")
    for cut in sorted({0, 3, 10, 23, 24, 40, len(data) // 2, table.data_start, table.data_end - 1}):
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError):
            read_table(bad)
    bad.write_bytes(b"GGUX" + data[4:])
    with pytest.raises(ValueError, match="magic"):
        read_table(bad)
