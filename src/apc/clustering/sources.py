"""Assemble the training data of one clustering cell from the pattern store (torch/numpy only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .data import PackedPatterns, WeightedPatterns
from ..extraction.magnitudes import MagnitudeReader
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
    idx = sample_index(reader.n_tokens, max_n, seed)
    if idx is None:
        return PackedPatterns.from_readers([reader])
    return PackedPatterns([reader.packed(idx)], reader.width, sources=[f"{path} (sample of {max_n})"])


def sample_index(n: int, max_n: int | None, seed: int) -> np.ndarray | None:
    """Sorted seeded sample of ``max_n`` of ``n`` rows, or None for all rows."""
    if max_n is None or max_n >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=max_n, replace=False))


def weighted_layer(path: str | Path, max_n: int | None, seed: int, *, weighting: str = "magnitude",
                   column_norms: np.ndarray | None = None) -> WeightedPatterns:
    """Patterns of one layer file with their magnitudes (same rows and sample as :func:`sample_layer`).

    ``weighting="magnitude"``: w = |x|; ``"output"``: w = |x_j| * ``column_norms[layer, j]``
    (``column_norms``: ``(n_layers, width)`` from :func:`apc.magnitudes.down_column_norms`, ``down_in`` only).
    Only the sampled codes are read into memory; without a sample they stay memory-mapped.
    Where the magnitude store keeps a token sample of the pattern store's rows (``store.magnitudes``),
    only those tokens are used, and ``max_n`` samples among them.
    """
    path = Path(path)
    reader = PatternReader(path)
    projection, layer = reader.meta.get("projection", path.parent.name), int(reader.meta.get("layer", -1))
    mag_path = path.parent / "magnitudes" / path.name
    if not mag_path.exists():
        raise FileNotFoundError(f"no magnitudes stored for projection {projection!r} (missing {mag_path}); "
                                "add the projection to the extraction's magnitude projections")
    mags = MagnitudeReader(mag_path)
    if mags.width != reader.width:
        raise ValueError(f"{mag_path}: {mags.n_tokens} x {mags.width} magnitudes for "
                         f"{reader.n_tokens} x {reader.width} patterns in {path}")
    at = reader.locate(mags)  # pattern rows of the magnitudes' tokens (None: the same rows)
    scale = None
    if weighting == "output":
        if projection != "down_in" or column_norms is None:
            raise ValueError(f"weighting 'output' needs projection 'down_in' and column_norms; got "
                             f"projection {projection!r}, column_norms {'given' if column_norms is not None else 'None'}")
        scale = [np.asarray(column_norms)[layer]]
    elif weighting != "magnitude":
        raise ValueError(f"weighting must be 'magnitude' or 'output', got {weighting!r}")
    idx = sample_index(mags.n_tokens, max_n, seed)
    if at is None:
        bits = reader.packed(idx) if idx is not None else reader.packed()
    else:
        bits = reader.packed(at if idx is None else at[idx])
    codes = mags.codes[idx] if idx is not None else mags.codes
    return WeightedPatterns([bits], reader.width, [codes], tables=[mags.codec.table()], column_scale=scale,
                            weighting=weighting, sources=[str(path)])


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


def weighted_pooled(paths: list[Path], max_per_layer: int | None, seed: int, *, weighting: str = "magnitude",
                    column_norms: np.ndarray | None = None) -> WeightedPatterns:
    """All layers' patterns and magnitudes in one set, sampled like :func:`pooled`."""
    return WeightedPatterns.concat([
        weighted_layer(p, max_per_layer, seed * 1_000_003 + i, weighting=weighting, column_norms=column_norms)
        for i, p in enumerate(paths)
    ])
