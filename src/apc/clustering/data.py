"""Bit-packed pattern sets that stream to a device in chunks.

A :class:`PackedPatterns` is a logical concatenation of one or more packed
arrays (``uint8 (n_i, ceil(width/8))``, ``numpy.packbits`` order): numpy
arrays, read-only memory maps of pattern files, or ``uint8`` torch tensors
(possibly already on the GPU).  Nothing is unpacked on the host: chunks travel
packed and are unpacked on the target device with
:func:`apc.extraction.patterns.unpack_torch`, so host memory and transfer volume are
bounded by the chunk size, never by the number of patterns.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from ..extraction.patterns import PatternReader, pack, pack_torch, packed_width, unpack_torch

__all__ = ["PackedPatterns", "WeightedPatterns"]


class PackedPatterns:
    """A set of bit-packed binary patterns of a common ``width``.

    Parameters
    ----------
    arrays:
        One or more 2-D ``uint8`` arrays of shape ``(n_i, ceil(width/8))``
        (numpy arrays, memmaps or torch tensors), concatenated logically in
        the given order (e.g. one per layer).
    width:
        Number of neurons per pattern.
    sources:
        Optional names of the arrays (file paths), used in error messages.
    """

    def __init__(self, arrays: Sequence, width: int, sources: Sequence[str] | None = None):
        if isinstance(arrays, (np.ndarray, torch.Tensor)):
            arrays = [arrays]
        arrays = list(arrays)
        if not arrays:
            raise ValueError("PackedPatterns needs at least one array")
        width = int(width)
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        sources = list(sources) if sources is not None else [f"array {i}" for i in range(len(arrays))]
        if len(sources) != len(arrays):
            raise ValueError(f"{len(sources)} source names for {len(arrays)} arrays")
        pw = packed_width(width)
        for arr, src in zip(arrays, sources):
            if arr.dtype not in (np.uint8, torch.uint8) or arr.ndim != 2:
                raise ValueError(f"{src}: expected a 2-D uint8 packed array, got {arr.dtype} {tuple(arr.shape)}")
            if arr.shape[1] != pw:
                raise ValueError(
                    f"{src}: packed rows have {arr.shape[1]} bytes, expected {pw} for width {width}"
                )
        self._arrays = arrays
        self._sources = sources
        self._width = width
        lengths = [int(a.shape[0]) for a in arrays]
        self._offsets = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_bits(cls, bits: np.ndarray | torch.Tensor) -> "PackedPatterns":
        """Pack an in-memory ``(n, width)`` bool array (tests, small data)."""
        if bits.ndim != 2:
            raise ValueError(f"expected a 2-D (n, width) bit array, got shape {tuple(bits.shape)}")
        return cls([pack(bits)], int(bits.shape[1]), sources=["in-memory bits"])

    @classmethod
    def from_readers(cls, readers: Sequence[PatternReader]) -> "PackedPatterns":
        """Concatenate :class:`apc.extraction.patterns.PatternReader` files (e.g. one per layer).

        All readers must have the same width; a disagreeing one is named in
        the ``ValueError``.
        """
        readers = list(readers)
        if not readers:
            raise ValueError("from_readers needs at least one PatternReader")
        width = readers[0].width
        for r in readers[1:]:
            if r.width != width:
                raise ValueError(
                    f"{r.path}: width {r.width} disagrees with {readers[0].path} (width {width})"
                )
        return cls([r.packed() for r in readers], width, sources=[str(r.path) for r in readers])

    @classmethod
    def from_files(cls, paths: Sequence[str | os.PathLike]) -> "PackedPatterns":
        """Open pattern files (``L??.npy`` with ``.json`` sidecars) as memory maps."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        return cls.from_readers([PatternReader(Path(p)) for p in paths])

    # ------------------------------------------------------------------ basic properties
    @property
    def n(self) -> int:
        """Number of patterns."""
        return int(self._offsets[-1])

    @property
    def width(self) -> int:
        """Neurons per pattern."""
        return self._width

    @property
    def packed_width(self) -> int:
        """Bytes per packed row."""
        return packed_width(self._width)

    @property
    def sources(self) -> list[str]:
        """Names of the underlying arrays."""
        return list(self._sources)

    @property
    def offsets(self) -> np.ndarray:
        """Start row of each underlying array, plus ``n`` at the end."""
        return self._offsets.copy()

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"PackedPatterns(n={self.n}, width={self.width}, arrays={len(self._arrays)})"

    # ------------------------------------------------------------------ access
    def _pieces(self, start: int, stop: int) -> Iterator[tuple[int, int, int]]:
        """``(array index, local start, local stop)`` of the arrays covering global rows ``[start, stop)``."""
        first = int(np.searchsorted(self._offsets, start, side="right")) - 1
        for i in range(first, len(self._arrays)):
            lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
            if lo >= stop:
                break
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            if b > a:
                yield i, a, b

    def _slice(self, start: int, stop: int, device: torch.device) -> torch.Tensor:
        """Packed rows ``[start, stop)`` as a uint8 tensor on ``device``."""
        pieces = [_to_device(self._arrays[i][a:b], device) for i, a, b in self._pieces(start, stop)]
        if len(pieces) == 1:
            return pieces[0]
        return torch.cat(pieces, dim=0)

    def values(self, packed: torch.Tensor, start: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The rows the clustering engine works on, for the packed block ``packed`` that begins
        at global row ``start``: here the unpacked bits ``(m, width)`` of ``dtype``."""
        return unpack_torch(packed, self._width, dtype)

    def packed_chunks(self, chunk_size: int, device: str | torch.device = "cpu") -> Iterator[torch.Tensor]:
        """Yield packed chunks ``(<= chunk_size, ceil(width/8)) uint8`` on ``device``, in order.

        Chunks follow the logical concatenation: every chunk but the last has
        exactly ``chunk_size`` rows, whatever the array boundaries.
        """
        chunk_size = int(chunk_size)
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        device = torch.device(device)
        for start in range(0, self.n, chunk_size):
            yield self._slice(start, min(start + chunk_size, self.n), device)

    def chunks(
        self, chunk_size: int, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
    ) -> Iterator[torch.Tensor]:
        """Yield unpacked chunks ``(<= chunk_size, width)`` of ``dtype`` on ``device``.

        The bytes travel packed and are unpacked on the device.
        """
        for packed in self.packed_chunks(chunk_size, device):
            yield unpack_torch(packed, self._width, dtype)

    def packed_rows(self, index: np.ndarray | Sequence[int] | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
        """Packed rows at arbitrary (global) indices, in the given order, on ``device``."""
        if isinstance(index, torch.Tensor):
            index = index.detach().cpu().numpy()
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        device = torch.device(device)
        if index.size and (index.min() < 0 or index.max() >= self.n):
            raise IndexError(f"row index out of range for {self.n} patterns")
        out = torch.empty((index.size, self.packed_width), dtype=torch.uint8, device=device)
        which = np.searchsorted(self._offsets, index, side="right") - 1
        for i in np.unique(which):
            pos = np.nonzero(which == i)[0]
            local = index[pos] - self._offsets[i]
            arr = self._arrays[i]
            if isinstance(arr, np.ndarray):
                order = np.argsort(local, kind="stable")  # sorted reads are kinder to memmaps
                rows = np.empty((local.size, self.packed_width), dtype=np.uint8)
                rows[order] = arr[local[order]]
                rows = torch.from_numpy(rows)
            else:
                rows = arr[torch.from_numpy(local).to(arr.device)]
            out[torch.from_numpy(pos).to(device)] = rows.to(device)
        return out

    def rows(
        self,
        index: np.ndarray | Sequence[int] | torch.Tensor,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Unpacked rows ``(len(index), width)`` of ``dtype`` on ``device``."""
        return unpack_torch(self.packed_rows(index, device), self._width, dtype)

    def subsample(self, max_n: int, seed: int = 0) -> "PackedPatterns":
        """A deterministic uniform sample of at most ``max_n`` rows, without replacement, in order.

        Returns ``self`` when ``max_n >= n``; otherwise an in-memory set.
        """
        max_n = int(max_n)
        if max_n <= 0:
            raise ValueError(f"max_n must be positive, got {max_n}")
        if max_n >= self.n:
            return self
        idx = np.sort(np.random.RandomState(seed).choice(self.n, size=max_n, replace=False))
        return PackedPatterns([self.packed_rows(idx, "cpu").numpy()], self._width, sources=[f"subsample of {self!r}"])

    def slice(self, start: int, stop: int) -> "PackedPatterns":
        """Rows ``[start, stop)`` as a set over views of the same arrays (nothing is copied)."""
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= self.n:
            raise IndexError(f"row range [{start}, {stop}) outside {self.n} patterns")
        arrays, sources = [], []
        for i, (arr, src) in enumerate(zip(self._arrays, self._sources)):
            lo, hi = int(self._offsets[i]), int(self._offsets[i + 1])
            a, b = max(start, lo) - lo, min(stop, hi) - lo
            if b > a:
                arrays.append(arr[a:b])
                sources.append(src)
        if not arrays:
            arrays, sources = [self._arrays[0][:0]], [self._sources[0]]
        return PackedPatterns(arrays, self._width, sources=sources)

    def to(self, device: str | torch.device) -> "PackedPatterns":
        """All rows as one packed tensor on ``device`` (opt-in cache: ``n * ceil(width/8)`` bytes)."""
        device = torch.device(device)
        return PackedPatterns([self._slice(0, self.n, device)], self._width, sources=[f"{self!r} on {device}"])

    def bits(self) -> np.ndarray:
        """All rows unpacked as a ``(n, width)`` bool numpy array (small data / tests only)."""
        return unpack_torch(self._slice(0, self.n, torch.device("cpu")), self._width, torch.bool).numpy()

    def select_columns(self, columns: np.ndarray | Sequence[int], chunk_size: int = 65536) -> "PackedPatterns":
        """The patterns restricted to ``columns`` (in that order), packed in memory
        (``n * ceil(len(columns)/8)`` bytes), streamed chunk by chunk."""
        cols = torch.as_tensor(np.asarray(columns, dtype=np.int64))
        if cols.numel() == 0 or int(cols.min()) < 0 or int(cols.max()) >= self._width:
            raise ValueError(f"columns must be non-empty indices in [0, {self._width})")
        parts = [pack_torch(unpack_torch(p, self._width, torch.bool).index_select(1, cols)).numpy()
                 for p in self.packed_chunks(chunk_size, "cpu")]
        return PackedPatterns([np.concatenate(parts)], int(cols.numel()), sources=[f"columns of {self!r}"])


def _to_device(piece, device: torch.device) -> torch.Tensor:
    """A numpy or torch slice as a tensor on ``device`` (memory maps are copied: the disk read)."""
    if isinstance(piece, np.ndarray):
        piece = np.ascontiguousarray(piece) if piece.flags.writeable else np.array(piece)
        piece = torch.from_numpy(piece)
    return piece.to(device)


class WeightedPatterns(PackedPatterns):
    """Packed patterns with a non-negative weight per (token, neuron), streamed beside the bits.

    ``weights`` holds one array per packed array, ``(n_i, width)``: ``uint8``
    magnitude codes decoded through ``tables[i]`` (``(256,)`` float32, see
    :class:`apc.magnitudes.MagnitudeCodec`), or a float array used as is
    (``tables[i] = None``).  ``column_scale[i]`` (``(width,)``, optional)
    multiplies every row of array ``i`` (e.g. ``||W_down[:, j]||`` of its
    layer).  Weights travel as stored (1 byte per code) and are decoded on
    the device, block by block, so they are never all in host memory.
    ``weighting`` names what the weights mean (``magnitude``, ``output``).
    For the clustering engine, :meth:`values` are the weights, not the bits.
    """

    def __init__(self, arrays: Sequence, width: int, weights: Sequence, *, tables: Sequence | None = None,
                 column_scale: Sequence | None = None, weighting: str = "magnitude",
                 sources: Sequence[str] | None = None):
        super().__init__(arrays, width, sources)
        if isinstance(weights, (np.ndarray, torch.Tensor)):
            weights = [weights]
        weights = list(weights)
        n_arr = len(self._arrays)
        tables = [None] * n_arr if tables is None else list(tables)
        scales = [None] * n_arr if column_scale is None else list(column_scale)
        if not len(weights) == len(tables) == len(scales) == n_arr:
            raise ValueError(f"weights: {len(weights)} weight arrays, {len(tables)} tables and {len(scales)} "
                             f"column scales for {n_arr} pattern arrays")
        for w, t, src, lo, hi in zip(weights, tables, self._sources, self._offsets[:-1], self._offsets[1:]):
            if tuple(w.shape) != (hi - lo, self._width):
                raise ValueError(f"weights for {src}: shape {tuple(w.shape)}, expected ({hi - lo}, {self._width})")
            if (t is None) == (w.dtype in (np.uint8, torch.uint8)):
                raise ValueError(f"weights for {src}: uint8 codes need a decode table, float weights none")
        self._weights = weights
        self._tables = [None if t is None else torch.as_tensor(t, dtype=torch.float32) for t in tables]
        self._scales = [None if c is None else torch.as_tensor(np.asarray(c), dtype=torch.float32).reshape(-1)
                        for c in scales]
        bad = [i for i, c in enumerate(self._scales) if c is not None and c.numel() != self._width]
        if bad:
            raise ValueError(f"column_scale {bad[0]} has {self._scales[bad[0]].numel()} values, expected {self._width}")
        self.weighting = str(weighting)

    @classmethod
    def from_bits(cls, bits, weights, weighting: str = "magnitude") -> "WeightedPatterns":
        """In-memory ``bits: (n, width) bool`` with float ``weights: (n, width)`` (tests, small data)."""
        w = np.asarray(weights, dtype=np.float32)
        return cls([pack(bits)], int(bits.shape[1]), [w], weighting=weighting, sources=["in-memory bits"])

    @classmethod
    def concat(cls, parts: Sequence["WeightedPatterns"]) -> "WeightedPatterns":
        """One set of several (e.g. one per layer, the pooled scope); all parts share width and weighting."""
        parts = list(parts)
        if not parts or len({(p.width, p.weighting) for p in parts}) != 1:
            raise ValueError("concat needs at least one WeightedPatterns, all of one width and weighting")
        return cls([a for p in parts for a in p._arrays], parts[0].width, [w for p in parts for w in p._weights],
                   tables=[t for p in parts for t in p._tables], column_scale=[c for p in parts for c in p._scales],
                   weighting=parts[0].weighting, sources=[s for p in parts for s in p._sources])

    def _weight_piece(self, i: int, a, device: torch.device) -> torch.Tensor:
        w = _to_device(self._weights[i][a], device)
        if self._tables[i] is not None:
            w = self._tables[i].to(device)[w.long()]
        else:
            w = w.float()
        if self._scales[i] is not None:
            w = w * self._scales[i].to(device)
        return w

    def weight_range(self, start: int, stop: int, device: str | torch.device = "cpu") -> torch.Tensor:
        """Weights of global rows ``[start, stop)``, ``(m, width) float32`` on ``device``."""
        device = torch.device(device)
        pieces = [self._weight_piece(i, slice(a, b), device) for i, a, b in self._pieces(start, stop)]
        if not pieces:
            return torch.zeros((0, self._width), dtype=torch.float32, device=device)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def weight_chunks(self, chunk_size: int, device: str | torch.device = "cpu") -> Iterator[torch.Tensor]:
        """Yield weight chunks ``(<= chunk_size, width) float32``, aligned with :meth:`packed_chunks`."""
        for start in range(0, self.n, int(chunk_size)):
            yield self.weight_range(start, min(start + int(chunk_size), self.n), device)

    def values(self, packed: torch.Tensor, start: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The weights ``(m, width) float32`` of the rows of ``packed`` (beginning at global row ``start``)."""
        return self.weight_range(start, start + packed.shape[0], packed.device)
