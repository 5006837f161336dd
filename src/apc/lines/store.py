"""A line's calibration file: one ``.npz`` holding the JSON-able table and its arrays.

:meth:`apc.lines.Line.calibrate` returns a nested dict of numbers, lists and arrays (``torch.Tensor`` or
``numpy.ndarray``, e.g. LaRoSA's ``(d_model, d_model)`` rotation per layer or R-Sparse's factors).  The file
keeps the table as JSON under the key ``table.json`` (a byte array) and every array under ``a{i}``, the
table naming it ``{"__array__": "a{i}", "shape": [...], "dtype": "float32"}`` (:func:`calibration_summary` gives
that JSON: every number of the table, the arrays by shape); :func:`read_calibration` gives the arrays back as float32 or the
stored dtype's ``torch.Tensor``.  Written atomically: a job that fails leaves no file behind.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from apc.common.atomic import atomic_path

__all__ = ["calibration_summary", "read_calibration", "write_calibration"]

_TABLE = "table.json"


def _split(obj: Any, arrays: dict) -> Any:
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # a torch tensor, without importing torch here
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = obj
        return {"__array__": key, "shape": list(obj.shape), "dtype": str(obj.dtype)}
    if isinstance(obj, dict):
        return {str(k): _split(v, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split(v, arrays) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def write_calibration(path: str | os.PathLike, table: dict) -> None:
    """Write ``table`` (a line's calibration: nested dicts, lists, numbers and arrays) to ``path`` (``.npz``)."""
    arrays: dict = {}
    plain = _split(table, arrays)
    data = np.frombuffer(json.dumps(plain, allow_nan=True).encode(), dtype=np.uint8)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **{_TABLE: data}, **arrays)


def read_calibration(path: str | os.PathLike) -> dict:
    """The table :func:`write_calibration` wrote, its arrays as ``torch.Tensor``; ``ValueError`` naming the file
    if it is not one."""
    import torch

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        plain = json.loads(bytes(arrays.pop(_TABLE)).decode())
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path}: not a line calibration file ({err}); rerun its calibrate_line job") from None

    def join(obj):
        if isinstance(obj, dict):
            if "__array__" in obj:
                return torch.from_numpy(np.ascontiguousarray(arrays[obj["__array__"]]))
            return {k: join(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [join(v) for v in obj]
        return obj

    return join(plain)


def calibration_summary(path: str | os.PathLike) -> dict:
    """The table of a calibration file without its arrays (each named by key, shape and dtype): small, JSON."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(bytes(z[_TABLE]).decode())
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"{path}: not a line calibration file ({err}); rerun its calibrate_line job") from None
