"""Device selection, matrix-product precision and peak GPU memory: the one module that touches devices."""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

__all__ = ["resolve_device", "exact_matmul", "cuda_peak_memory"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; ``"cpu"``/``"cuda"``/``"cuda:N"`` as given.

    Raises ``ValueError`` if CUDA is requested but not available.
    """
    if isinstance(device, torch.device):
        name = str(device)
    else:
        name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {device!r} (use 'auto', 'cpu' or 'cuda')") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {device!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r} (use 'auto', 'cpu' or 'cuda')")
    return dev


@contextlib.contextmanager
def exact_matmul(device: torch.device, allow_tf32: bool = True) -> Iterator[None]:
    """Allow TF32 float32 matrix products on CUDA inside the block, restoring the setting after.

    TF32 is exact here: the operands are 0/1 (exactly representable in TF32)
    and cuBLAS accumulates in fp32, so counts below 2**24 come out exact.
    """
    if device.type != "cuda" or not allow_tf32:
        yield
        return
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def cuda_peak_memory(device) -> dict:
    """``{"cuda_max_memory_allocated_bytes": n}`` (summed over GPUs) when ``device`` is CUDA, else ``{}``:
    for sidecars, so a real run sizes the ``gpu`` requests."""
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return {}
    return {"cuda_max_memory_allocated_bytes": sum(torch.cuda.max_memory_allocated(i)
                                                   for i in range(torch.cuda.device_count()))}
