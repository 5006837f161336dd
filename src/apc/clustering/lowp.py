"""Exact pattern-centroid overlaps in the narrowest product the device offers.

The operands are 0/1 and every overlap is a count below 2**24, so each of
these products is exact:

* ``fp8``  -- float8 e4m3 operands through ``torch._scaled_mm`` (unit scales,
  float32 output); CUDA compute capability >= 8.9 (and CPU, for tests);
* ``int8`` -- ``torch._int_mm`` with int32 output (CUDA, and CPU);
* ``bf16`` -- bfloat16 operands with float32 output (CUDA only);
* ``tf32`` / ``fp32`` -- float32 operands, TF32 tensor cores allowed or not.

``"auto"`` picks fp8 where the GPU has it, int8 on other CUDA GPUs and fp32
on the CPU.  The one-byte paths pad the operands with zero rows and columns
to the shapes the kernels accept (multiples of 16; at least 32 rows), which
changes no overlap; padded centroid columns are cut off before any argmax.
"""

from __future__ import annotations

import contextlib

import torch

from ..extraction.patterns import unpack_torch
from ..common.device import exact_matmul
from .distance import overlap as float_overlap
from .kernels import FP8_ONE, INT8_ONE, unpack_operand

__all__ = ["MATMULS", "resolve_matmul", "ExactProduct"]

#: Names accepted by the ``matmul`` option.
MATMULS = ("auto", "fp8", "int8", "bf16", "tf32", "fp32")

_ALIGN = 16
_MIN_ROWS = 32


def _round_up(v: int, a: int) -> int:
    return -(-int(v) // a) * a


def fp8_supported(device: torch.device) -> bool:
    """fp8 ``_scaled_mm`` runs here: CUDA capability >= 8.9, or the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 9)
    return device.type == "cpu"


def resolve_matmul(name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """``"auto"`` -> ``fp8`` (CUDA >= 8.9), ``int8`` (other CUDA), else ``bf16``/``fp32`` after ``dtype``.

    Explicit names are checked against the device; an unknown or unusable
    name raises ``ValueError`` naming the ``matmul`` option.
    """
    name = str(name).lower()
    if name not in MATMULS:
        raise ValueError(f"unknown matmul {name!r}; known: {', '.join(MATMULS)}")
    if name == "auto":
        if device.type == "cuda":
            return "fp8" if fp8_supported(device) else "int8"
        return "bf16" if dtype == torch.bfloat16 else "fp32"
    if name == "fp8" and not fp8_supported(device):
        raise ValueError(f"matmul 'fp8' needs CUDA compute capability >= 8.9 (or the CPU); {device} has "
                         f"{torch.cuda.get_device_capability(device)}")
    if name == "bf16" and device.type != "cuda":
        raise ValueError("matmul 'bf16' needs a CUDA device (CPU bf16 products are slow and round their output)")
    return name


class ExactProduct:
    """One exact 0/1 product kind on one device: operand preparation and the product itself.

    ``prepare_centroids(c)`` turns ``(K, width)`` bool centroids into the
    right operand once per pass; ``unpack(packed)`` turns a packed block
    ``(m, ceil(width/8)) uint8`` into ``(operand, row sums (m,))``;
    ``overlap(x, c, m, k)`` returns the ``(m, K)`` counts ``x @ c.T``
    (float32, or int32 for int8) as a view without the padding.
    """

    def __init__(self, name: str, device: torch.device, width: int):
        self.name = name
        self.device = device
        self.width = int(width)
        self.one_byte = name in ("fp8", "int8")
        self.one = FP8_ONE if name == "fp8" else INT8_ONE  # the byte of a 1 in a one-byte operand
        self.cols = _round_up(width, _ALIGN) if self.one_byte else self.width
        self._buffer: torch.Tensor | None = None
        self._scale = torch.ones((), dtype=torch.float32, device=device)
        self.dtype = {"bf16": torch.bfloat16}.get(name, torch.float32)

    def context(self):
        """The precision context to run the products in (TF32 allowed except for ``fp32``)."""
        if self.one_byte:
            return contextlib.nullcontext()
        return exact_matmul(self.device, allow_tf32=self.name != "fp32")

    def view(self, raw: torch.Tensor) -> torch.Tensor:
        """A one-byte ``uint8`` operand viewed as the product's dtype (``float8_e4m3fn`` or ``int8``)."""
        return raw.view(torch.float8_e4m3fn if self.name == "fp8" else torch.int8)

    def padded_rows(self, m: int) -> int:
        """Rows of a one-byte operand holding ``m`` rows (zero rows up to what the kernels accept)."""
        return max(_MIN_ROWS, _round_up(m, _ALIGN))

    def prepare_centroids(self, centroids: torch.Tensor) -> torch.Tensor:
        """``(K, width)`` bool -> operand (``(K_pad, cols)`` one-byte, or ``(K, width)`` float)."""
        if not self.one_byte:
            return centroids.to(self.dtype)
        k = centroids.shape[0]
        out = torch.zeros((self.padded_rows(k), self.cols), dtype=torch.uint8, device=self.device)
        out[:k, : self.width] = centroids.to(torch.uint8) * self.one
        return self.view(out)

    def unpack(self, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Packed block -> ``(operand, row sums (m,) float32)``."""
        m = packed.shape[0]
        if not self.one_byte:
            x = unpack_torch(packed, self.width, self.dtype)
            return x, x.sum(dim=1, dtype=torch.float32)
        rows = self.padded_rows(m)
        if self._buffer is None or self._buffer.shape[0] < rows:
            self._buffer = torch.empty((rows, self.cols), dtype=torch.uint8, device=self.device)
        raw, rowsum = unpack_operand(packed, self.width, rows, self.cols,
                                     self.one, out=self._buffer)
        return self.view(raw), rowsum.to(torch.float32)

    def overlap(self, x: torch.Tensor, c: torch.Tensor, m: int, k: int) -> torch.Tensor:
        """``(m, K)`` exact counts ``x @ c.T`` (float32; int32 for int8), padding cut off."""
        if self.name == "fp8":
            out = torch._scaled_mm(x, c.t(), scale_a=self._scale, scale_b=self._scale, out_dtype=torch.float32)
        elif self.name == "int8":
            out = torch._int_mm(x, c.t())
        else:
            return float_overlap(x, c)
        return out[:m, :k]
