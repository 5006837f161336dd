"""Centroid files: bit-packed ``.npy`` plus a ``.json`` sidecar.

``save_centroids(path, centroids (L, K, width) bool, meta)`` writes
``path`` (``.npy`` suffix enforced) holding ``(L, K, ceil(width/8)) uint8``
in ``numpy.packbits`` order, without pickle, and ``path.with_suffix('.json')``
holding ``meta`` plus ``width``, ``k``, ``n_sets`` (= L: layers for a
per-layer scope, 1 for pooled), ``density`` (mean share of ones over all
centroids) and ``format``.  Both are written atomically.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.atomic import read_json, read_npy, write_json, write_npy
from ..extraction.patterns import packed_width

__all__ = ["FORMAT", "save_centroids", "load_centroids", "centroid_paths"]

FORMAT = "apc-centroids-v1"


def centroid_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(array path, sidecar path)`` for ``path`` (with or without the ``.npy`` suffix)."""
    path = Path(path)
    if path.suffix != ".npy":
        path = path.with_name(path.name + ".npy")
    return path, path.with_suffix(".json")


def save_centroids(path: str | os.PathLike, centroids: np.ndarray | torch.Tensor, meta: dict[str, Any] | None = None) -> dict:
    """Save ``centroids`` (``(L, K, width)`` bool; a ``(K, width)`` array is taken as L=1).

    Returns the sidecar dict.  The keys ``width``, ``k``, ``n_sets``,
    ``density`` and ``format`` are set here and override ``meta``'s.
    """
    if isinstance(centroids, torch.Tensor):
        centroids = centroids.detach().cpu().numpy()
    bits = np.asarray(centroids)
    if bits.ndim == 2:
        bits = bits[None]
    if bits.ndim != 3:
        raise ValueError(f"centroids must be (L, K, width) or (K, width), got shape {bits.shape}")
    if bits.dtype != bool:
        if not np.isin(bits, (0, 1)).all():
            raise ValueError("centroids must be boolean (0/1)")
        bits = bits.astype(bool)
    n_sets, k, width = bits.shape
    if k == 0 or width == 0:
        raise ValueError(f"centroids must be non-empty, got shape {bits.shape}")
    array_path, sidecar = centroid_paths(path)
    packed = np.packbits(bits, axis=-1)
    side = dict(meta or {})
    side.update(
        format=FORMAT, width=int(width), k=int(k), n_sets=int(n_sets),
        density=float(bits.mean()),
    )
    write_npy(array_path, packed)
    write_json(sidecar, side)
    return side


def load_centroids(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """Load ``(bits (L, K, width) bool, meta)``; clear errors for missing files or mismatches."""
    array_path, sidecar = centroid_paths(path)
    meta = read_json(sidecar)
    packed = read_npy(array_path)
    for key in ("width", "k", "n_sets"):
        if key not in meta:
            raise ValueError(f"{sidecar}: missing key {key!r}")
    width, k, n_sets = int(meta["width"]), int(meta["k"]), int(meta["n_sets"])
    if packed.dtype != np.uint8 or packed.ndim != 3:
        raise ValueError(f"{array_path}: expected a 3-D uint8 array, got {packed.dtype} {packed.shape}")
    expected = (n_sets, k, packed_width(width))
    if packed.shape != expected:
        raise ValueError(
            f"{array_path}: array shape {packed.shape} disagrees with its sidecar "
            f"(n_sets={n_sets}, k={k}, width={width} -> {expected})"
        )
    full = np.unpackbits(packed, axis=-1)
    if full[..., width:].any():
        raise ValueError(f"{array_path}: padding bits beyond width {width} are set; width in {sidecar} is wrong")
    return full[..., :width].astype(bool), meta
