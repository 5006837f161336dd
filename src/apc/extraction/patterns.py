"""Bit-packed activation-pattern store.

On disk, one (split, layer, projection) is two files:

* ``L{layer:02d}.npy`` -- ``uint8`` array of shape ``(n_tokens, ceil(width / 8))``,
  ``numpy.packbits(bits, axis=1)`` order (big-endian within a byte, the last
  byte zero-padded).  Row ``t`` is token ``t`` of the split, in window order,
  BOS positions excluded.
* ``L{layer:02d}.json`` -- metadata sidecar: model, split, layer, projection,
  width, n_tokens, threshold, density.

Writers fill the ``.npy`` in token chunks through a memory map on a temporary
file that is renamed into place only when complete.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from apc.common.rowstore import RowStoreReader, RowStoreWriter


def packed_width(width: int) -> int:
    """Bytes per packed row for ``width`` neurons."""
    return (int(width) + 7) // 8


def pack(bits: np.ndarray | torch.Tensor) -> np.ndarray:
    """Pack ``bits: (n, width) bool`` into ``(n, ceil(width/8)) uint8``."""
    if isinstance(bits, torch.Tensor):
        bits = bits.detach().to("cpu").numpy()
    return np.packbits(np.asarray(bits, dtype=bool), axis=-1)


def unpack(packed: np.ndarray, width: int) -> np.ndarray:
    """Unpack ``packed: (n, ceil(width/8)) uint8`` into ``(n, width) bool``."""
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.shape[-1] != packed_width(width):
        raise ValueError(f"packed rows have {packed.shape[-1]} bytes, expected {packed_width(width)} for width {width}")
    return np.unpackbits(packed, axis=-1, count=width).astype(bool)


_SHIFTS = torch.arange(7, -1, -1, dtype=torch.uint8)


def pack_torch(bits: torch.Tensor) -> torch.Tensor:
    """Pack ``bits: (n, width) bool`` on its device into ``(n, ceil(width/8)) uint8``."""
    n, width = bits.shape
    pad = packed_width(width) * 8 - width
    b = bits.to(torch.uint8)
    if pad:
        b = torch.nn.functional.pad(b, (0, pad))
    b = b.view(n, -1, 8) << _SHIFTS.to(bits.device)
    return b.sum(dim=-1, dtype=torch.uint8)


_BIT_TABLES: dict = {}


def _bit_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``(256, 8)`` table: row ``b`` holds the bits of byte ``b``, most significant first."""
    key = (device, dtype)
    table = _BIT_TABLES.get(key)
    if table is None:
        table = ((torch.arange(256).unsqueeze(-1) >> _SHIFTS.long()) & 1).to(device=device, dtype=dtype)
        _BIT_TABLES[key] = table
    return table


def unpack_torch(packed: torch.Tensor, width: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Unpack ``packed: (n, ceil(width/8)) uint8`` on its device into ``(n, width)`` of ``dtype``."""
    if packed.shape[-1] != packed_width(width):
        raise ValueError(f"packed rows have {packed.shape[-1]} bytes, expected {packed_width(width)} for width {width}")
    if dtype.is_floating_point and packed.device.type == "cpu":
        # one table lookup per byte: about 2x faster than shift-and-convert on CPU (on CUDA it is slower)
        bits = torch.nn.functional.embedding(packed.int(), _bit_table(packed.device, dtype))
        return bits.reshape(*packed.shape[:-1], packed.shape[-1] * 8)[..., :width].contiguous()
    bits = (packed.unsqueeze(-1) >> _SHIFTS.to(packed.device)) & 1
    return bits.reshape(*packed.shape[:-1], packed.shape[-1] * 8)[..., :width].to(dtype)


def pattern_path(root: str | os.PathLike, split: str, projection: str, layer: int) -> Path:
    """Path of the packed array for one (split, projection, layer) under ``root``."""
    return Path(root) / split / projection / f"L{layer:02d}.npy"


class PatternWriter(RowStoreWriter):
    """Write one (split, layer, projection) pattern file in token chunks.

    ``n_tokens`` (the split's tokens) must be known up front; rows are appended with
    :meth:`append` and the file appears at its final path only after :meth:`close`.
    ``sample = (rows, seed)`` keeps only a token sample (:class:`apc.common.rowstore.RowStoreWriter`).
    """

    def __init__(self, path: str | os.PathLike, n_tokens: int, width: int, meta: dict, sample=None):
        super().__init__(path, n_tokens, width, meta, dtype=np.uint8, row_width=packed_width(width), sample=sample)
        self._ones = 0

    def append(self, bits: np.ndarray | torch.Tensor) -> None:
        """Append ``bits: (m, width) bool``: the split's next m tokens (only the sampled ones are kept)."""
        bits = self._take(bits)
        self._check(bits.shape[-1], bits.shape[0])
        if isinstance(bits, torch.Tensor):
            self._ones += int(bits.sum())
            self._write(pack_torch(bits.bool()).cpu().numpy())
        else:
            self._ones += int(np.count_nonzero(bits))
            self._write(pack(bits))

    def _extra_meta(self) -> dict:
        return {"density": self._ones / max(1, self.n_tokens * self.width)}


class PatternReader(RowStoreReader):
    """Read one pattern file and its sidecar; stream it back in token chunks."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path, dtype=np.uint8, row_width=packed_width)

    def packed(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Packed rows ``(m, ceil(width/8)) uint8`` (all rows if ``rows`` is None)."""
        return np.asarray(self._arr if rows is None else self._arr[rows])

    def chunks(self, chunk_tokens: int) -> Iterator[np.ndarray]:
        """Yield packed chunks ``(<= chunk_tokens, ceil(width/8)) uint8`` in order."""
        for span in self._spans(chunk_tokens):
            yield np.asarray(self._arr[span])

    def bits(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Unpacked rows ``(m, width) bool``."""
        return unpack(self.packed(rows), self.width)
