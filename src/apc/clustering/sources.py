"""Assemble the training data of one clustering cell from the pattern store (torch/numpy only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import PackedPatterns
from ..extraction.patterns import PatternReader, pattern_path


def layer_files(root: str | Path, split: str, projection: str, layers: list[int] | None = None) -> list[Path]:
    """Pattern files of ``projection`` for ``layers`` (all stored layers if None), in layer order."""
    folder = Path(root) / split / projection
    if layers is None:
        files = sorted(folder.glob("L*.npy"))
        if not files:
            raise FileNotFoundError(f"no pattern files in {folder}")
        return files
    files = [pattern_path(root, split, projection, l) for l in layers]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise FileNotFoundError(f"missing pattern files: {', '.join(missing[:3])}")
    return files


def sample_layer(path: str | Path, max_n: int | None, seed: int) -> PackedPatterns:
    """Patterns of one layer file; a seeded uniform sample of ``max_n`` rows (kept in order) if given."""
    reader = PatternReader(path)
    if max_n is None or max_n >= reader.n_tokens:
        return PackedPatterns.from_readers([reader])
    idx = np.sort(np.random.default_rng(seed).choice(reader.n_tokens, size=max_n, replace=False))
    return PackedPatterns([reader.packed(idx)], reader.width, sources=[f"{path} (sample of {max_n})"])


def pooled(paths: list[Path], max_per_layer: int | None, seed: int) -> PackedPatterns:
    """All layers' patterns in one set (the paper's pooling), each layer sampled to ``max_per_layer``.

    Without a sample (``max_per_layer=None``) the layers stay memory-mapped and are
    streamed chunk by chunk; with one, only the sampled rows are held in memory.
    """
    if max_per_layer is None:
        return PackedPatterns.from_readers([PatternReader(p) for p in paths])
    parts = [sample_layer(p, max_per_layer, seed * 1_000_003 + i) for i, p in enumerate(paths)]
    widths = {p.width for p in parts}
    if len(widths) != 1:
        raise ValueError(f"pattern files disagree on width: {sorted(widths)}")
    arrays = [p.packed_rows(np.arange(p.n)).numpy() for p in parts]
    return PackedPatterns(arrays, parts[0].width, sources=[str(p) for p in paths])
