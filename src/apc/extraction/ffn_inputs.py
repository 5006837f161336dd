"""FFN-input store: per layer, the tensor entering the MLP (the input of its first product, ``gate_proj``).

On disk, one (split, layer) is two files under ``root``:

* ``{split}/L{layer:02d}.npy`` -- ``float16`` array ``(n_tokens, d_model)``.  Row ``t``
  is token ``t`` of the split in window order, BOS positions excluded: the same
  token as row ``t`` of the pattern store (:mod:`apc.patterns`).
* ``{split}/L{layer:02d}.json`` -- sidecar: model, split, layer, width (d_model),
  n_tokens, dtype, max_abs.

Files are filled window by window through a memory map on a temporary file
renamed into place when complete.  Only torch and numpy are used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from apc.common.sites import ffn_sites
from apc.common.rowstore import RowStoreReader, RowStoreWriter, sample_rows
from apc.extraction.extract import forward_windows
from apc.common.progress import get_logger

log = get_logger("apc.extraction.ffn_inputs")

_F16_MAX = float(np.finfo(np.float16).max)


def ffn_input_path(root: str | os.PathLike, split: str, layer: int) -> Path:
    """Path of the float16 array of one (split, layer) under ``root``."""
    return Path(root) / split / f"L{layer:02d}.npy"


class FfnInputWriter(RowStoreWriter):
    """Write one (split, layer) FFN-input file in token chunks; it appears only after :meth:`close`."""

    def __init__(self, path: str | os.PathLike, n_tokens: int, width: int, meta: dict, sample=None):
        super().__init__(path, n_tokens, width, meta, dtype=np.float16, sample=sample)
        self._max_abs = 0.0

    def append(self, x: torch.Tensor) -> None:
        """Append ``x: (m, width)``, the split's next m tokens (any float dtype; stored as float16)."""
        x = self._take(x)
        m = x.shape[0]
        self._check(x.shape[-1], m)
        peak = float(x.detach().abs().max()) if m else 0.0
        if not peak <= _F16_MAX:
            raise ValueError(f"{self.path}: FFN input with |x| = {peak} does not fit float16 (max {_F16_MAX})")
        self._max_abs = max(self._max_abs, peak)
        self._write(x.detach().to(torch.float16).cpu().numpy())

    def _extra_meta(self) -> dict:
        return {"dtype": "float16", "max_abs": self._max_abs}


class FfnInputReader(RowStoreReader):
    """Read one FFN-input file (memory-mapped) and its sidecar."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path, dtype=np.float16)

    def rows(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """``(m, width) float16`` rows (all rows if ``rows`` is None), read into memory."""
        return np.array(self._arr if rows is None else self._arr[rows])

    def chunks(self, chunk_tokens: int) -> Iterator[np.ndarray]:
        """Yield ``(<= chunk_tokens, width) float16`` chunks in token order."""
        for span in self._spans(chunk_tokens):
            yield np.array(self._arr[span])


class FfnInputCapture:
    """Context manager: while active, every forward pass appends each layer's MLP input to the store.

    It can share a pass with another capture (the pattern extraction does so): the files of
    ``root/split`` are complete when the block exits without an error, and removed when it raises.
    ``windows_shape``: ``(n_windows, seq_len)`` of the split the passes run over.
    """

    def __init__(self, model: nn.Module, root: str | os.PathLike, split: str, meta: dict,
                 windows_shape: tuple[int, int], *, skip_first: bool, max_tokens: int | None = None,
                 sample_seed: int = 0):
        self.sites = ffn_sites(model)
        self.root, self.split, self.meta = root, split, meta
        self.n_windows, self.seq_len = (int(n) for n in windows_shape)
        self.n_tokens = self.n_windows * (self.seq_len - (1 if skip_first else 0))
        self.skip_first = skip_first
        self.sample = (sample_rows(self.n_tokens, max_tokens, sample_seed), sample_seed)
        self.width = self.sites[0].d_model
        self.writers: list[FfnInputWriter] = []
        self.sidecars: list[dict] = []
        self._handles: list = []

    def __enter__(self) -> "FfnInputCapture":
        self.writers = [FfnInputWriter(ffn_input_path(self.root, self.split, l), self.n_tokens, self.width,
                                       {**self.meta, "split": self.split, "layer": l}, sample=self.sample)
                        for l in range(len(self.sites))]
        self._handles = [site.on_ffn_input(self._hook(l)) for l, site in enumerate(self.sites)]
        return self

    def _hook(self, layer: int):
        def pre(x):
            x = x[:, 1:] if self.skip_first else x
            self.writers[layer].append(x.reshape(-1, x.shape[-1]))
        return pre

    def __exit__(self, exc_type, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if exc_type is not None:
            self._abort()
            return
        try:
            self.sidecars = [w.close() for w in self.writers]
        except BaseException:
            self._abort()
            raise

    def _abort(self) -> None:
        for w in self.writers:
            w.abort()

    def summary(self, wall: float) -> dict:
        """The store's summary after the block: tokens, layers, width, bytes, wall time, max |x| per layer."""
        n_layers = len(self.sites)
        store = sum(ffn_input_path(self.root, self.split, l).stat().st_size for l in range(n_layers))
        n_kept = self.writers[0].n_tokens
        log.info("%s: %d of %d tokens x %d layers x width %d in %.1f s; store %.1f MB",
                 self.split, n_kept, self.n_tokens, n_layers, self.width, wall, store / 1e6)
        return {"split": self.split, "n_tokens": n_kept, "n_split_tokens": self.n_tokens, "n_windows": self.n_windows,
                "seq_len": self.seq_len, "n_layers": n_layers, "width": self.width, "wall_time_s": wall,
                "store_bytes": int(store), "max_abs": [s["max_abs"] for s in self.sidecars]}


def extract_ffn_inputs(
    model: nn.Module,
    windows: torch.Tensor,
    root: str | os.PathLike,
    split: str,
    meta: dict,
    *,
    skip_first: bool,
    device: str = "cpu",
    max_tokens: int | None = None,
    sample_seed: int = 0,
) -> dict:
    """Write every layer's MLP input for ``windows: (n_windows, seq_len) int64`` under ``root/split``.

    ``skip_first`` drops position 0 (BOS) of every window, as the pattern
    extraction does, so row ``t`` matches row ``t`` of the pattern store.
    ``max_tokens`` keeps a seeded sample of that many tokens (the same in every layer;
    :func:`apc.common.rowstore.sample_rows` with ``sample_seed``), None every token.
    Returns a summary dict (tokens, layers, width, store bytes, wall time).  The workflow
    captures this store in the pattern extraction's pass instead (:class:`FfnInputCapture`).
    """
    capture = FfnInputCapture(model, root, split, meta, windows.shape, skip_first=skip_first,
                              max_tokens=max_tokens, sample_seed=sample_seed)
    with capture:
        wall = forward_windows(model, windows, device, f"extracting {split} FFN inputs")
    return capture.summary(wall)
