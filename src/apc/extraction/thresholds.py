"""Streaming per-(layer, projection) quantiles of |x| from exact float-bit histograms.

Method: every |x| is cast to float32 and binned by the top ``8 + bits`` bits of
its IEEE-754 representation (exponent plus ``bits`` leading mantissa bits).
For positive floats that order is the numeric order, so bin ``i`` holds exactly
the values in ``[edge(i), edge(i + 1))`` with ``edge(i) = float32 from bits
(i << (23 - bits))``: neighbouring edges differ by a factor of at most
``1 + 2**-bits`` (0.1 % for the default 10 bits).  The threshold T for sparsity
q is the edge whose share of values below it is closest to q; that share is
the *exact* achieved sparsity on the calibration data, since ``|x| < T`` holds
exactly for the bins below.  Memory is ``2**(8 + bits)`` counts per
(layer, projection), independent of the number of tokens.  Only torch is needed.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

#: The smallest positive float32 (a subnormal): ``|x| >= ZERO_THRESHOLD`` iff ``x != 0`` for float32 ``x``.
ZERO_THRESHOLD = float(np.nextafter(np.float32(0), np.float32(1)))


class AbsQuantileHistogram:
    """Histogram of |x| over float32 bit patterns for one (layer, projection)."""

    def __init__(self, bits: int = 10):
        if not 1 <= bits <= 16:
            raise ValueError(f"histogram mantissa bits must be in 1..16, got {bits}")
        self.shift = 23 - int(bits)
        self.bins = 1 << (31 - self.shift)  # sign bit is always 0 for |x|
        self.counts = None
        self.n = 0

    def update(self, x: torch.Tensor) -> None:
        """Add ``x: (..., width)`` values (any float dtype, any device)."""
        idx = (x.detach().float().abs().reshape(-1).view(torch.int32) >> self.shift)
        c = torch.bincount(idx, minlength=self.bins)
        self.counts = c if self.counts is None else self.counts + c
        self.n += idx.numel()

    def edge(self, i: int) -> float:
        """Lower edge of bin ``i`` as a float."""
        return float(np.array([i << self.shift], dtype=np.int32).view(np.float32)[0])

    def quantile(self, q: float) -> tuple[float, float]:
        """``(threshold T, exact share of values with |x| < T)`` for target share ``q``."""
        if self.n == 0:
            raise ValueError("no values were added to the histogram")
        counts = self.counts.to("cpu", torch.float64)
        below = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(counts, 0)])[:-1] / self.n
        i = int(torch.argmin((below - q).abs()))
        return self.edge(i), float(below[i])


def threshold_table(hists: dict[tuple[str, int], AbsQuantileHistogram], sparsity: float) -> dict[str, list[dict]]:
    """``{projection: [{layer, threshold, achieved_sparsity}, ...]}`` from per-(projection, layer) histograms."""
    out: dict[str, list[dict]] = {}
    for proj, layer in sorted(hists):
        t, achieved = hists[(proj, layer)].quantile(sparsity)
        if not math.isfinite(t):
            raise ValueError(f"non-finite threshold for {proj} layer {layer}: activations contain inf/nan")
        out.setdefault(proj, []).append({"layer": layer, "threshold": t, "achieved_sparsity": achieved})
    return out


def kept_share_tables(hists: dict[tuple[str, int], AbsQuantileHistogram], kept_shares: list[float]) -> list[dict]:
    """One threshold table per kept share rho from the same histograms.

    Returns ``[{"kept_share": rho, "projections": threshold_table(hists, 1 - rho)}, ...]``:
    ``|x| >= T`` keeps the share ``1 - achieved_sparsity`` (closest to rho) of the values.
    """
    bad = [r for r in kept_shares if not 0.0 < float(r) <= 1.0]
    if bad or not kept_shares:
        raise ValueError(f"kept_shares must be a non-empty list of shares in (0, 1], got {list(kept_shares)}")
    return [{"kept_share": float(r), "projections": threshold_table(hists, 1.0 - float(r))} for r in kept_shares]


def save_histograms(path: str | os.PathLike, hists: dict[tuple[str, int], AbsQuantileHistogram], n_tokens: int) -> None:
    """Write the histograms to ``path`` (``.npz``): the non-empty bins of each (projection, layer).

    Written to a temporary and renamed into place.  :func:`load_histograms` reads them back with
    the same counts, so every quantile taken later equals the one of the calibration pass.
    """
    from apc.common.atomic import atomic_path

    arrays: dict[str, np.ndarray] = {"n_tokens": np.int64(n_tokens)}
    for (proj, layer), h in sorted(hists.items()):
        counts = h.counts.cpu().numpy()
        idx = np.flatnonzero(counts)
        arrays[f"{proj}/{layer}/bins"] = idx.astype(np.int32)
        arrays[f"{proj}/{layer}/counts"] = counts[idx].astype(np.int64)
        arrays[f"{proj}/{layer}/shift"] = np.int64(h.shift)
    with atomic_path(path, ".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def load_histograms(path: str | os.PathLike, projections=None) -> tuple[dict[tuple[str, int], AbsQuantileHistogram], int]:
    """``({(projection, layer): histogram}, n_tokens)`` from :func:`save_histograms`'s file.

    ``projections``: only these (all when None); a projection that is not stored is a ``KeyError``
    naming the file.
    """
    with np.load(path) as z:
        keys = {tuple(k.split("/")[:2]) for k in z.files if k.count("/") == 2}
        stored = {p for p, _ in keys}
        missing = sorted(set(projections or ()) - stored)
        if missing:
            raise KeyError(f"{path}: no histograms of projection(s) {missing}; stored: {sorted(stored)}")
        out = {}
        for proj, layer in keys:
            if projections is not None and proj not in projections:
                continue
            shift = int(z[f"{proj}/{layer}/shift"])
            h = AbsQuantileHistogram(23 - shift)
            counts = torch.zeros(h.bins, dtype=torch.int64)
            counts[torch.from_numpy(z[f"{proj}/{layer}/bins"].astype(np.int64))] = torch.from_numpy(z[f"{proj}/{layer}/counts"])
            h.counts, h.n = counts, int(counts.sum())
            out[(proj, int(layer))] = h
        return out, int(z["n_tokens"])
