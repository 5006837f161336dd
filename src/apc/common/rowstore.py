"""Token-row stores on disk: an ``(n_tokens, row_width)`` ``.npy`` plus a JSON sidecar.

The pattern, magnitude and FFN-input stores share this writer and reader: rows are appended
in token chunks through a memory map on a hidden temporary file, which is renamed
into place with its sidecar only when every declared row is written, so a
failed job never leaves a half-written store.

A store may keep a *token sample* of its split instead of every token: ``rows`` (sorted
positions in the split's token order, :func:`sample_rows`) says which.  The writer still
receives every token and keeps only those rows; the sidecar gains ``sample`` (``seed``,
``n_split_tokens``) and the folder a ``rows.npy`` with the positions, so two stores of one
split sampled with one seed are joined row by row (:meth:`RowStoreReader.locate`): samples
of one seed are nested, the smaller a subset of the larger.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from apc.common.atomic import read_json, read_npy, write_json, write_npy

__all__ = ["RowStoreReader", "RowStoreWriter", "sample_rows", "ROWS_FILE"]

#: The sampled token positions of every store file in a folder (absent: every token).
ROWS_FILE = "rows.npy"


def sample_rows(n_split_tokens: int, n: int | None, seed: int) -> np.ndarray | None:
    """Sorted positions ``(min(n, n_split_tokens),) int64`` of a seeded uniform token sample of a split,
    or None for every token (``n`` None or at least the split).

    The first ``n`` entries of one seeded permutation: samples of one seed and split are nested.
    """
    n_split_tokens = int(n_split_tokens)
    if n is None or int(n) >= n_split_tokens:
        return None
    perm = np.random.default_rng(int(seed)).permutation(n_split_tokens)
    return np.sort(perm[: int(n)]).astype(np.int64)


class RowStoreWriter:
    """Base writer: subclasses convert their rows and call :meth:`_write`; they may add sidecar
    fields with :meth:`_extra_meta`.  ``width`` is the logical row width (neurons or features),
    ``row_width`` the stored one (bytes per row for bit-packed data).  ``n_tokens`` is the split's
    token count; with ``sample = (rows, seed)`` (``rows`` from :func:`sample_rows`, None = all) only
    those rows are kept: subclasses pass every chunk through :meth:`_take` first."""

    def __init__(self, path: str | os.PathLike, n_tokens: int, width: int, meta: dict, *, dtype,
                 row_width: int | None = None, sample: tuple[np.ndarray | None, int] | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.partial.npy")
        self.n_split = int(n_tokens)
        self.rows, self.sample_seed = sample if sample is not None else (None, 0)
        if self.rows is not None:
            self.rows = np.asarray(self.rows, dtype=np.int64)
            if len(self.rows) and (self.rows[-1] >= self.n_split or (np.diff(self.rows) <= 0).any()):
                raise ValueError(f"{self.path}: sample rows must be sorted, unique positions below {self.n_split}")
        self._seen = 0
        n_tokens = self.n_split if self.rows is None else len(self.rows)
        self.n_tokens, self.width, self.meta = int(n_tokens), int(width), dict(meta)
        shape = (self.n_tokens, self.width if row_width is None else int(row_width))
        self._mm = np.lib.format.open_memmap(self.tmp, mode="w+", dtype=dtype, shape=shape)
        self._row = 0

    def _take(self, x):
        """The rows of ``x: (m, ...)`` (numpy or torch; the split's next ``m`` tokens) that the store keeps."""
        m = x.shape[0]
        start = self._seen
        if start + m > self.n_split:
            raise ValueError(f"{self.path}: more than the split's {self.n_split} tokens")
        self._seen += m
        if self.rows is None:
            return x
        lo, hi = np.searchsorted(self.rows, [start, start + m])
        idx = self.rows[lo:hi] - start
        if hasattr(x, "device"):  # a torch tensor: index on its device
            import torch

            return x[torch.from_numpy(idx).to(x.device)]
        return x[idx]

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

    def close_written(self) -> dict:
        """:meth:`close` after cutting the declared rows to those written (a store whose row count is
        known only at its end: the tokens routed to one expert)."""
        if self._row != self.n_tokens:
            self._mm.flush()
            written = np.array(self._mm[: self._row])
            del self._mm
            np.save(self.tmp, written)  # the same hidden temporary, now exactly the written rows
            self._mm = np.load(self.tmp, mmap_mode="r+")
            self.n_tokens = self._row
        return self.close()

    def close(self) -> dict:
        """Flush, rename into place and write the sidecar; return the sidecar dict."""
        if self._row != self.n_tokens:
            self.abort()
            raise ValueError(f"{self.path}: wrote {self._row} of {self.n_tokens} declared tokens")
        if self.rows is not None and self._seen != self.n_split:
            self.abort()
            raise ValueError(f"{self.path}: saw {self._seen} of the split's {self.n_split} tokens")
        self._mm.flush()
        del self._mm
        if self.rows is not None:
            rows_path = self.path.parent / ROWS_FILE
            if not rows_path.exists() or not np.array_equal(read_npy(rows_path), self.rows):
                write_npy(rows_path, self.rows)
        os.replace(self.tmp, self.path)
        meta = {**self.meta, "width": self.width, "n_tokens": self.n_tokens, **self._extra_meta()}
        if self.rows is not None:
            meta["sample"] = {"seed": int(self.sample_seed), "n_split_tokens": self.n_split}
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

        self.sample = self.meta.get("sample")
        self._rows = None

    def __len__(self) -> int:
        return self.n_tokens

    @property
    def token_rows(self) -> np.ndarray:
        """``(n_tokens,) int64``: the split position of every stored row (``arange`` without a sample)."""
        if self._rows is None:
            if self.sample is None:
                self._rows = np.arange(self.n_tokens, dtype=np.int64)
            else:
                self._rows = read_npy(self.path.parent / ROWS_FILE).astype(np.int64)
                if self._rows.shape != (self.n_tokens,):
                    raise ValueError(f"{self.path.parent / ROWS_FILE}: {self._rows.shape[0]} positions for "
                                     f"{self.n_tokens} stored rows")
        return self._rows

    def n_split_tokens(self) -> int:
        """Tokens of the split this store was written from (its rows are a sample of them, or all)."""
        return int(self.sample["n_split_tokens"]) if self.sample else self.n_tokens

    def locate(self, other: "RowStoreReader") -> np.ndarray | None:
        """Indices of this store's rows holding ``other``'s tokens (None: the same rows, in order).

        ``ValueError`` naming both files when ``other`` holds a token this store lacks or the two come
        from splits of different sizes (different windows).
        """
        if self.n_split_tokens() != other.n_split_tokens():
            raise ValueError(f"{other.path} has {other.n_split_tokens()} tokens but {self.path} has "
                             f"{self.n_split_tokens()}: the stores come from different windows")
        if self.sample is None and other.sample is None:
            return None
        mine, theirs = self.token_rows, other.token_rows
        idx = np.searchsorted(mine, theirs)
        ok = idx < len(mine)
        if not ok.all() or not np.array_equal(mine[idx], theirs):
            raise ValueError(f"{other.path} holds tokens that {self.path} does not: sample them with one "
                             "'store.seed' and at most as many rows (config keys 'store.*')")
        return None if len(idx) == len(mine) else idx

    def _spans(self, chunk_tokens: int) -> Iterator[slice]:
        """Row slices of ``<= chunk_tokens`` rows, in token order."""
        for start in range(0, self.n_tokens, chunk_tokens):
            yield slice(start, start + chunk_tokens)
