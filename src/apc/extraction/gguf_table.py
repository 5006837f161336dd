"""The header and tensor table of a GGUF file, read without materialising its metadata.

``gguf.GGUFReader`` builds a numpy view of every metadata item (49,152 vocabulary strings and as many
merges for the embedded model: seconds of pure Python); checking that a file is whole needs only the
offsets.  :func:`read_table` walks the header, skips every key-value pair by its length fields, reads
each tensor's name, shape, type and offset, and checks that every tensor's data lies inside the file.
Little-endian GGUF version 2 and 3 (the byte order every published model uses); the format is
https://github.com/ggml-org/ggml/blob/master/docs/gguf.md.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType
from gguf.gguf_reader import GGUFReader

__all__ = ["GGUFTable", "read_table"]

MAGIC = b"GGUF"
#: the little-endian numpy type of each scalar value type (the gguf package's own table); strings and arrays
#: have their own layout
_SCALAR = {t: np.dtype(np_type).newbyteorder("<") for t, np_type in GGUFReader.gguf_scalar_to_np.items()}


@dataclass(frozen=True)
class GGUFTable:
    """``version``; ``n_kv`` metadata pairs; ``tensors``: ``(name, shape, ggml type, offset)`` each;
    ``data_start``: where the tensor data begins (aligned); ``data_end``: the end of the last tensor's bytes."""

    version: int
    n_kv: int
    tensors: tuple
    data_start: int
    data_end: int


class _Cursor:
    def __init__(self, buf, size: int):
        self.buf, self.size, self.pos = buf, size, 0

    def take(self, fmt: str):
        n = struct.calcsize(fmt)
        if self.pos + n > self.size:
            raise ValueError(f"the file ends at byte {self.size}, inside the header (at byte {self.pos})")
        vals = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return vals if len(vals) > 1 else vals[0]

    def skip(self, n: int):
        if n < 0 or self.pos + n > self.size:
            raise ValueError(f"the file ends at byte {self.size}, inside the header (a field of {n} bytes at "
                             f"byte {self.pos})")
        self.pos += n

    def string(self) -> bytes:
        n = self.take("<Q")
        start = self.pos
        self.skip(n)
        return bytes(self.buf[start:self.pos])

    def value(self, vtype: int):
        if vtype in _SCALAR:
            dtype = _SCALAR[vtype]
            start = self.pos
            self.skip(dtype.itemsize)
            return np.frombuffer(self.buf, dtype, 1, start)[0].item()
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            itype, count = self.take("<IQ")
            if itype in _SCALAR:
                self.skip(count * _SCALAR[itype].itemsize)
            elif itype == GGUFValueType.STRING:
                for _ in range(count):
                    self.skip(self.take("<Q"))
            elif itype == GGUFValueType.ARRAY:
                for _ in range(count):
                    self.value(GGUFValueType.ARRAY)
            else:
                raise ValueError(f"unknown array item type {itype} at byte {self.pos}")
            return None
        raise ValueError(f"unknown value type {vtype} at byte {self.pos}")


def _tensor_bytes(shape, ggml_type: int) -> int:
    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    except (KeyError, ValueError):
        raise ValueError(f"unknown tensor type {ggml_type}") from None
    n = 1
    for d in shape:
        n *= int(d)
    if n % block:
        raise ValueError(f"a tensor of {n} elements is not a whole number of {block}-element blocks")
    return n // block * size


def read_table(path: str | Path) -> GGUFTable:
    """The header and tensor table of GGUF file ``path``; ``ValueError`` naming what is wrong (bad magic,
    an unknown version or type, a header or tensor that runs past the end of the file)."""
    path = Path(path)
    size = path.stat().st_size
    if size < 24:
        raise ValueError(f"{size} bytes: shorter than a GGUF header")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf, size)
        if cur.take("4s") != MAGIC:
            raise ValueError("no GGUF magic at the start")
        version = cur.take("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (a big-endian or unknown file; versions 2 and 3 are read)")
        n_tensors, n_kv = cur.take("<QQ")
        alignment = 32
        for _ in range(n_kv):
            key = cur.string()
            value = cur.value(cur.take("<I"))
            if key == b"general.alignment":
                alignment = int(value)
        tensors = []
        for _ in range(n_tensors):
            name = cur.string().decode("utf-8", "replace")
            n_dims = cur.take("<I")
            shape = tuple(cur.take("<Q") for _ in range(n_dims))
            ggml_type, offset = cur.take("<IQ")
            tensors.append((name, shape, ggml_type, offset))
        start = -(-cur.pos // alignment) * alignment
        end = start
        for name, shape, ggml_type, offset in tensors:
            stop = start + offset + _tensor_bytes(shape, ggml_type)
            if stop > size:
                raise ValueError(f"tensor {name} ends at byte {stop}, past the end of the file ({size} bytes)")
            end = max(end, stop)
    return GGUFTable(version, n_kv, tuple(tensors), start, end)
