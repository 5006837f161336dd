"""Per-token activation magnitudes |x|, stored as 8-bit log-scale codes.

On disk, one (split, layer, projection) is two files beside the pattern store:

* ``{split}/{projection}/magnitudes/L{layer:02d}.npy`` -- ``uint8`` codes of shape
  ``(n_tokens, width)``; row ``t`` is the same token as row ``t`` of the pattern
  file (window order, BOS positions excluded);
* ``.../L{layer:02d}.json`` -- sidecar: the pattern metadata plus ``reference``,
  ``octaves_below``, ``octaves_above``, ``max_relative_error``, ``clipped``
  (values above the range) and ``max_abs``.

Why 8-bit log codes, not float16: magnitudes only weight clustering and
metrics, where a few per cent are harmless, and the store is half the size
(``n_tokens * width`` bytes: 566 MB for 12,288 tokens x 1536 neurons x 30
layers; float16 would be twice that).

Code ``0`` is ``|x| < lo``; code ``c`` in 1..255 is the bin
``[lo * 2**((c-1) s), lo * 2**(c s))`` with ``s = (below + above) / 255``
octaves, ``lo = reference * 2**-below``; it decodes to the bin's geometric
middle.  Error bound: for ``lo <= |x| <= hi`` the decoded value ``v`` has
``|v - |x|| <= (2**(s/2) - 1) |x|`` (3.3 % for the default 8 + 16 octaves);
``|x| < lo`` decodes to 0 (error < lo); ``|x| > hi`` is clipped to ``hi``'s
bin (counted in ``clipped``).  Extraction uses the projection's threshold
as ``reference``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from apc.common.sites import ffn_sites
from apc.common.rowstore import RowStoreReader, RowStoreWriter

__all__ = [
    "MagnitudeCodec",
    "MagnitudeReader",
    "MagnitudeWriter",
    "down_column_norms",
    "magnitude_path",
]

#: Default range around the reference value, in octaves.
OCTAVES_BELOW = 8.0
OCTAVES_ABOVE = 16.0
_N_BINS = 255


class MagnitudeCodec:
    """Encode ``|x|`` into ``uint8`` log-scale codes and back (see the module docstring)."""

    def __init__(self, reference: float, octaves_below: float = OCTAVES_BELOW, octaves_above: float = OCTAVES_ABOVE):
        reference = float(reference)
        if not (math.isfinite(reference) and reference > 0):
            raise ValueError(f"reference must be a positive finite number, got {reference}")
        if not (octaves_below >= 0 and octaves_above > 0):
            raise ValueError(f"octaves_below must be >= 0 and octaves_above > 0, got {octaves_below}, {octaves_above}")
        self.reference = reference
        self.octaves_below = float(octaves_below)
        self.octaves_above = float(octaves_above)
        self.step = (self.octaves_below + self.octaves_above) / _N_BINS  # octaves per code
        self.log2_lo = math.log2(reference) - self.octaves_below
        self.lo = 2.0 ** self.log2_lo
        self.hi = 2.0 ** (self.log2_lo + _N_BINS * self.step)

    @property
    def max_relative_error(self) -> float:
        """Bound on ``|decoded - |x|| / |x|`` for ``lo <= |x| <= hi``."""
        return 2.0 ** (self.step / 2) - 1.0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x: (..., width)`` any float -> ``uint8`` codes of ``|x|`` on the same device."""
        a = x.detach().float().abs()
        code = torch.floor((torch.log2(a) - self.log2_lo) / self.step) + 1  # -inf for 0 -> code 0
        code = code.clamp_(0, _N_BINS)
        return code.to(torch.uint8)

    def table(self, device: str | torch.device = "cpu") -> torch.Tensor:
        """``(256,)`` float32 decode table: entry ``c`` is the value of code ``c``."""
        c = torch.arange(256, dtype=torch.float64)
        values = torch.exp2(self.log2_lo + (c - 0.5) * self.step)
        values[0] = 0.0
        return values.to(device=device, dtype=torch.float32)

    def decode(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``uint8`` codes -> float32 magnitudes on the codes' device."""
        codes = torch.as_tensor(codes)
        return self.table(codes.device)[codes.long()]

    def meta(self) -> dict:
        return {"reference": self.reference, "octaves_below": self.octaves_below,
                "octaves_above": self.octaves_above, "max_relative_error": self.max_relative_error}

    @classmethod
    def from_meta(cls, meta: dict) -> "MagnitudeCodec":
        return cls(meta["reference"], meta["octaves_below"], meta["octaves_above"])


def magnitude_path(root: str | os.PathLike, split: str, projection: str, layer: int) -> Path:
    """Path of the magnitude codes for one (split, projection, layer) under ``root``."""
    return Path(root) / split / projection / "magnitudes" / f"L{layer:02d}.npy"


class MagnitudeWriter(RowStoreWriter):
    """Write one magnitude file in token chunks; it appears at its path only after :meth:`close`."""

    def __init__(self, path: str | os.PathLike, n_tokens: int, width: int, meta: dict, reference: float,
                 sample=None):
        super().__init__(path, n_tokens, width, meta, dtype=np.uint8, sample=sample)
        self.codec = MagnitudeCodec(reference)
        self._clipped = 0
        self._max = 0.0

    def append(self, x: torch.Tensor) -> None:
        """Append activations ``x: (m, width)`` (signed; only ``|x|`` is kept) of the split's next m tokens."""
        x = self._take(x)
        m = x.shape[0]
        self._check(x.shape[-1], m)
        a = x.detach().float().abs()
        self._clipped += int((a > self.codec.hi).sum())
        self._max = max(self._max, float(a.max())) if m else self._max
        self._write(self.codec.encode(a).cpu().numpy())

    def _extra_meta(self) -> dict:
        return {**self.codec.meta(), "clipped": self._clipped, "max_abs": self._max}


class MagnitudeReader(RowStoreReader):
    """Read one magnitude file (memory-mapped) and its sidecar."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(path, dtype=np.uint8)
        self.codes = self._arr
        self.codec = MagnitudeCodec.from_meta(self.meta)

    @property
    def nbytes(self) -> int:
        """Size of the code array on disk (header included)."""
        return self.path.stat().st_size

    def values(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        """Decoded magnitudes ``(m, width) float32`` (all rows if ``rows`` is None)."""
        codes = np.array(self.codes if rows is None else self.codes[rows])  # a writable copy
        return self.codec.decode(torch.from_numpy(codes)).numpy()

    def chunks(self, chunk_tokens: int) -> Iterator[np.ndarray]:
        """Yield decoded chunks ``(<= chunk_tokens, width) float32`` in token order."""
        for span in self._spans(chunk_tokens):
            yield self.values(span)


def down_column_norms(model: nn.Module) -> np.ndarray:
    """``(n_sites, d_ff) float32``: ``||W_down[:, j]||_2`` of every FFN site's second product (``down_proj``).

    Dropping neuron ``j`` of ``down_in`` with value ``x_j`` removes ``|x_j| * ||W_down[:, j]||``
    from the FFN output; these norms turn magnitudes into that cost (``output`` weighting).
    """
    with torch.no_grad():
        norms = [site.down_weight().detach().float().norm(dim=0).cpu() for site in ffn_sites(model)]
    return torch.stack(norms).numpy().astype(np.float32)
