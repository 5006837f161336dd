"""Whole-model decode time shares from a ``benchmarks/bench_decode.py`` table.

The table (CSV, ``#`` comment lines first) has one row per (batch, line, compute share) with
``ms_per_token`` and ``dense_ms`` (the dense model at the same batch, same run).  The time share of a
line is ``ms_per_token / dense_ms``: the decode step's time over the dense model's, attention, norms,
LM head and launches included.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

DECODE_COLUMNS = ("batch", "line", "compute_share", "ms_per_token", "dense_ms")


def is_decode_table(path) -> bool:
    """Whether ``path`` is a ``bench_decode.py`` table (it has the :data:`DECODE_COLUMNS`)."""
    with Path(path).open(newline="") as fh:
        header = next(csv.reader(line for line in fh if not line.startswith("#")), [])
    return all(c in header for c in DECODE_COLUMNS)


def load_decode_table(path) -> list[dict]:
    """Rows of a decode table with numeric ``batch``, ``compute_share``, ``ms_per_token``, ``dense_ms``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"decode table {path} does not exist")
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    out = []
    for i, r in enumerate(rows):
        missing = [c for c in DECODE_COLUMNS if c not in r]
        if missing:
            raise ValueError(f"{path}: row {i} lacks column(s) {missing}; expected {', '.join(DECODE_COLUMNS)}")
        out.append({**r, "batch": int(r["batch"]), "compute_share": float(r["compute_share"]),
                    "ms_per_token": float(r["ms_per_token"]), "dense_ms": float(r["dense_ms"])})
    return out


def decode_time_share(rows, line: str, compute_share: float, batch: int) -> float:
    """``ms_per_token / dense_ms`` of ``line`` at ``batch``, interpolated linearly in the FFN compute share
    between measured rows (clamped at the ends); 1 for ``dense``."""
    if line == "dense":
        return 1.0
    pts = sorted((r["compute_share"], r["ms_per_token"] / r["dense_ms"]) for r in rows
                 if r["line"] == line and r["batch"] == int(batch))
    if not pts:
        have = sorted({(r["line"], r["batch"]) for r in rows})
        raise ValueError(f"the decode table has no {line!r} rows at batch {batch} (has {have})")
    xs, ys = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    return float(ys[0]) if len(xs) == 1 else float(np.interp(float(compute_share), xs, ys))
