"""Token-row stores on disk: an ``(n_tokens, row_width)`` ``.npy`` plus a JSON sidecar.

The pattern, magnitude and FFN-input stores share this writer and reader: rows are appended
in token chunks through a memory map on a hidden temporary file, which is renamed
into place with its sidecar only when every declared row is written, so a
failed job never leaves a half-written store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from apc.common.atomic import read_json, read_npy, write_json

__all__ = ["RowStoreReader", "RowStoreWriter"]


class RowStoreWriter:
    """Base writer: subclasses convert their rows and call :meth:`_write`; they may add sidecar
    fields with :meth:`_extra_meta`.  ``width`` is the logical row width (neurons or features),
    ``row_width`` the stored one (bytes per row for bit-packed data)."""

    def __init__(self, path: str | os.PathLike, n_tokens: int, width: int, meta: dict, *, dtype,
                 row_width: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.partial.npy")
        self.n_tokens, self.width, self.meta = int(n_tokens), int(width), dict(meta)
        shape = (self.n_tokens, self.width if row_width is None else int(row_width))
        self._mm = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=shape)
        self._row = 0

    def _check(self, width: int, m: int) -> None:
        """Raise unless ``m`` rows of ``width`` fit the declared store."""
        if width != self.width:
            raise ValueError(f"{self.path}: got rows of width {width}, expected {self.width}")
        if self._row + m > self.n_tokens:
            raise ValueError(f"{self.path}: more than the declared {self.n_tokens} tokens")

    def _write(self, rows: np.ndarray) -> None:
        m = rows.shape[0]
        self._mm[self._row : self._row + m] = rows
        self._row += m

    def _extra_meta(self) -> dict:
        return {}

    def close(self) -> dict:
        """Flush, rename into place and write the sidecar; return the sidecar dict."""
        if self._row != self.n_tokens:
            self.abort()
            raise ValueError(f"{self.path}: wrote {self._row} of {self.n_tokens} declared tokens")
        self._mm.flush()
        del self._mm
        os.replace(self.tmp, self.path)
        meta = {**self.meta, "width": self.width, "n_tokens": self.n_tokens, **self._extra_meta()}
        write_json(self.path.with_suffix(".json"), meta)
        return meta

    def abort(self) -> None:
        """Drop the partial file."""
        if hasattr(self, "_mm"):
            del self._mm
        if self.tmp.exists():
            self.tmp.unlink()


class RowStoreReader:
    """Base reader: the memory-mapped array ``_arr`` and its sidecar ``meta``, checked against each
    other (``dtype``, and ``(n_tokens, row_width(width))`` rows; ``row_width`` None = ``width``)."""

    def __init__(self, path: str | os.PathLike, *, dtype, row_width=None):
        self.path = Path(path)
        self.meta = read_json(self.path.with_suffix(".json"))
        self._arr = read_npy(self.path, mmap=True)
        self.width = int(self.meta["width"])
        self.n_tokens = int(self.meta["n_tokens"])
        shape = (self.n_tokens, self.width if row_width is None else int(row_width(self.width)))
        if self._arr.dtype != np.dtype(dtype) or self._arr.shape != shape:
            raise ValueError(f"{self.path}: {self._arr.dtype} array of shape {self._arr.shape} disagrees with its "
                             f"sidecar (n_tokens={self.n_tokens}, width={self.width} -> {np.dtype(dtype)} {shape})")

    def __len__(self) -> int:
        return self.n_tokens

    def _spans(self, chunk_tokens: int) -> Iterator[slice]:
        """Row slices of ``<= chunk_tokens`` rows, in token order."""
        for start in range(0, self.n_tokens, chunk_tokens):
            yield slice(start, start + chunk_tokens)
