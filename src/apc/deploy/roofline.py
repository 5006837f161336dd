"""The time bound of a masked gated FFN, and the time-share lookup in a measured table.

Bound for ``T`` tokens in ``G`` distinct groups (masks) at kept share ``rho``::

    bound = max(rho * dense_flops / peak_flops, min(1, G * rho) * weight_bytes / bandwidth)
    dense_flops = 2 * T * 3 * d_model * d_ff,   weight_bytes = 3 * d_model * d_ff * bytes_per_weight

With ``dense_share = s`` a part of the FFN always runs dense (CATS: ``s = 1/3``, the gate product),
and both terms become ``(s + (1 - s) * share) * ...``.

Benchmark table (``benchmarks/bench_ffn_masks.py --out``; CSV with a header row, or JSON: a list of
row objects or ``{"rows": [...]}``), one row per measured case:

================= ==========================================================================
``device``        device name (e.g. ``NVIDIA H200``, ``cpu``)
``dtype``         ``bfloat16`` / ``float32`` ...
``d_model``       FFN input width
``d_ff``          FFN intermediate width
``kernel``        ``dense``, ``per_token``, ``grouped`` or ``cats``
``assign``        token-to-group ids: ``uniform``, ``skewed`` (measured id counts), ``zipf1.1``
                  (a stand-in for them), or ``-`` (kernels without groups)
``tokens``        T, tokens in the call
``groups``        K for ``grouped`` (centroid masks the ids are drawn from); T for ``per_token``
                  and ``cats`` (one mask per token); 1 for ``dense``
``kept_share``    rho, the kept share of neurons (1 for dense)
``time_ms``       median time of the kernel
``dense_ms``      median time of the dense FFN on the same tokens, same run
``ratio``         ``time_ms / dense_ms``
``bound_share``   the bound above over ``dense_ms``
``time_over_bound`` ``time_ms`` over the bound
``timing``        how the time was taken: ``graph`` (CUDA graph replay), ``eager`` (CUDA events
                  around plain calls) or ``wall`` (CPU wall clock)
================= ==========================================================================

A CSV table may begin with ``#`` comment lines (the command that made it); they are skipped.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np

COLUMNS = ("device", "dtype", "d_model", "d_ff", "kernel", "assign", "tokens", "groups", "kept_share", "time_ms",
           "dense_ms", "ratio", "bound_share", "time_over_bound", "timing")
_NUMERIC = {"d_model": int, "d_ff": int, "tokens": int, "groups": int, "kept_share": float, "time_ms": float,
            "dense_ms": float, "ratio": float, "bound_share": float, "time_over_bound": float}
#: ``assign`` values preferred, in order, when a lookup names none and the table has several
ASSIGN_PREFERENCE = ("skewed", "uniform", "zipf1.1", "-")


def dense_flops(tokens: int, d_model: int, d_ff: int) -> float:
    """FLOPs of the dense gated FFN on ``tokens`` tokens: ``2 * T * 3 * d_model * d_ff``."""
    return 2.0 * tokens * 3 * d_model * d_ff


def bound(tokens: int, groups: int, kept_share: float, *, d_model: int, d_ff: int, peak_flops: float,
          bandwidth: float, bytes_per_weight: float, dense_share: float = 0.0) -> float:
    """Lower bound in seconds on a masked FFN's time (module docstring); ``peak_flops`` in FLOP/s,
    ``bandwidth`` in bytes/s."""
    for name, v in (("tokens", tokens), ("groups", groups), ("d_model", d_model), ("d_ff", d_ff)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if not 0.0 <= kept_share <= 1.0:
        raise ValueError(f"kept_share must lie in [0, 1], got {kept_share}")
    if not 0.0 <= dense_share <= 1.0:
        raise ValueError(f"dense_share must lie in [0, 1], got {dense_share}")
    if not (peak_flops > 0 and bandwidth > 0 and bytes_per_weight > 0):
        raise ValueError("peak_flops, bandwidth and bytes_per_weight must be > 0")
    s = float(dense_share)
    flop_share = s + (1 - s) * kept_share
    byte_share = s + (1 - s) * min(1.0, groups * kept_share)
    weight_bytes = 3.0 * d_model * d_ff * bytes_per_weight
    return max(flop_share * dense_flops(tokens, d_model, d_ff) / peak_flops, byte_share * weight_bytes / bandwidth)


# ----------------------------------------------------------------------------- table


def load_table(source) -> list[dict]:
    """Rows of a benchmark table: a CSV/JSON path, or rows already loaded (an iterable of mappings)."""
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"time-share table {path} does not exist")
        if path.suffix.lower() == ".json":
            data = json.loads(path.read_text())
            rows = data["rows"] if isinstance(data, dict) else data
        else:
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(line for line in fh if not line.startswith("#")))
    else:
        rows = list(source)
    out = []
    for i, r in enumerate(rows):
        missing = [c for c in ("kernel", "tokens", "groups", "kept_share", "ratio") if c not in r]
        if missing:
            raise ValueError(f"time-share table row {i} lacks column(s) {missing}; expected {', '.join(COLUMNS)}")
        row = dict(r)
        for c, typ in _NUMERIC.items():
            if c in row and row[c] not in ("", None):
                row[c] = typ(float(row[c])) if typ is int else typ(row[c])
        out.append(row)
    return out


def write_table(rows: Sequence[Mapping], path, comment: str = "") -> None:
    """Write rows with :data:`COLUMNS` as CSV (``.csv``, ``comment`` lines first, each after ``# ``)
    or JSON (``.json``, ``comment`` under the key ``comment``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps({"comment": comment, "columns": list(COLUMNS),
                                    "rows": [{c: r.get(c) for c in COLUMNS} for r in rows]}, indent=1))
        return
    with path.open("w", newline="") as fh:
        for line in comment.splitlines():
            fh.write(f"# {line}\n")
        w = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)


def _interp(xs: np.ndarray, ys: np.ndarray, x: float) -> float:
    """Linear interpolation, clamped at the ends (``xs`` sorted, distinct)."""
    if len(xs) == 1:
        return float(ys[0])
    return float(np.interp(x, xs, ys))


def time_share(table, kernel: str, tokens: int, kept_share: float, groups: int = 1, *, assign: str | None = None,
               d_model: int | None = None, d_ff: int | None = None, device: str | None = None,
               dtype: str | None = None) -> float:
    """Measured time of ``kernel`` over the dense FFN's, at ``tokens`` tokens, kept share
    ``kept_share`` and ``groups`` groups, from a benchmark table (path or rows, see module docstring).

    Interpolates linearly in the kept share and in log(groups) between measured rows, clamping at
    the table's edges; ``tokens`` must be a measured value.  ``dense`` is 1.  The keyword filters
    select among rows of several devices/shapes; ``assign`` defaults to the first of
    :data:`ASSIGN_PREFERENCE` present for the kernel.
    """
    if kernel == "dense":
        return 1.0
    if not 0.0 <= kept_share <= 1.0:
        raise ValueError(f"kept_share must lie in [0, 1], got {kept_share}")
    if int(groups) < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    rows = [r for r in load_table(table) if r["kernel"] == kernel]
    if not rows:
        raise ValueError(f"the time-share table has no rows for kernel {kernel!r}")
    for key, want in (("d_model", d_model), ("d_ff", d_ff), ("device", device), ("dtype", dtype)):
        if want is not None:
            rows = [r for r in rows if r.get(key) == want]
            if not rows:
                raise ValueError(f"the time-share table has no {kernel!r} rows with {key} = {want!r}")
    assigns = sorted({r.get("assign", "-") for r in rows})
    if assign is None:
        assign = next((a for a in ASSIGN_PREFERENCE if a in assigns), assigns[0])
    rows = [r for r in rows if r.get("assign", "-") == assign]
    if not rows:
        raise ValueError(f"the time-share table has no {kernel!r} rows with assign = {assign!r} (has {assigns})")
    measured = sorted({r["tokens"] for r in rows})
    rows = [r for r in rows if r["tokens"] == int(tokens)]
    if not rows:
        raise ValueError(f"the time-share table has no {kernel!r} rows at {tokens} tokens (measured: {measured})")
    setups = {(r.get("device"), r.get("dtype"), r.get("d_model"), r.get("d_ff")) for r in rows}
    if len(setups) > 1:
        raise ValueError(f"the time-share table holds several setups for {kernel!r} at {tokens} tokens "
                         f"(device, dtype, d_model, d_ff) = {sorted(setups, key=str)}; pass filters to pick one")
    by_group: dict[int, dict[float, float]] = {}
    for r in rows:
        by_group.setdefault(int(r["groups"]), {})[float(r["kept_share"])] = float(r["ratio"])
    gs = np.array(sorted(by_group), dtype=float)
    per_group = []
    for g in gs:
        pts = by_group[int(g)]
        rho = np.array(sorted(pts))
        per_group.append(_interp(rho, np.array([pts[v] for v in rho]), float(kept_share)))
    return _interp(np.log(gs), np.array(per_group), math.log(int(groups)))


def time_shares(table, kernel: str, kept_share: float, groups: int = 1, *, tokens: Iterable[int] = (1, 4096),
                **filters) -> dict[int, float]:
    """:func:`time_share` at several token counts: ``{tokens: ratio}``."""
    rows = load_table(table)
    return {int(t): time_share(rows, kernel, int(t), kept_share, groups, **filters) for t in tokens}
