"""Paired comparisons between frontier lines scored on the same tokens, and which lines are deployable.

A frontier point (:func:`apc.perplexity.frontier.score_point`) keeps, per scored token, its NLL
(``token_nll``), its KL from dense (``token_kl``) and whether its top-1 token agrees with dense's
(``token_top1``).  Two points scored on the same tokens are compared by the difference of their
means, with a moving-block bootstrap interval in which BOTH points are resampled with the same
block starts (:func:`apc.perplexity.intervals.resample_means`: the same seed and token count give
the same starts), so the difficulty the two share cancels:

* ``log_ratio``: ``mean(nll_a) - mean(nll_b)``, the log of ``ppl(a) / ppl(b)`` (below 0: a is better);
* ``kl``: ``mean(kl_a) - mean(kl_b)`` in nats (below 0: a is closer to dense);
* ``top1``: ``mean(top1_a) - mean(top1_b)`` (above 0: a agrees with dense more often).

Equal compute.  A line is placed at a compute share ``s`` (:func:`at_share`) by its point within
``tol`` (0.01) of ``s``, or else by linear interpolation between its two points that bracket ``s``
(each bootstrap replicate interpolated with the same weights as the point estimate, so the
interpolated replicates stay paired with the other line's); outside its points it has no place.
The log ratio is interpolated in log perplexity (linear in ``mean nll``), KL and top-1 linearly.

Other tokens.  A GRIFFIN point scores only the tokens after each window's dense prompt.  It is
paired with another line on their COMMON tokens (the positions both scored, :func:`common_tokens`):
both sides are restricted to them and resampled there.  Such a difference is not the difference of
the two lines' full-token figures, and the table says on how many tokens it was taken.

Below :data:`apc.perplexity.intervals.MIN_UNITS` blocks a difference carries no interval (NaN).
numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from apc.perplexity.intervals import BLOCK_TOKENS, LEVEL, N_BOOT, resample_means

__all__ = ["METRICS", "TOLERANCE", "deployable", "token_positions", "common_tokens", "Place", "at_share",
           "paired_difference", "lower_is_better", "verdict"]

#: the compared figures and the per-token array each is the mean of
METRICS = {"log_ratio": "token_nll", "kl": "token_kl", "top1": "token_top1"}
#: two points within this compute share of each other are at equal compute
TOLERANCE = 0.01


def deployable(line: str) -> bool:
    """Whether a line can run without knowing the dense FFN's answer: False for the upper bounds, the oracle
    cluster masks (family ``oracle`` with a clustering method other than ``static``: the true pattern picks the
    centroid) and neuron experts with the ``oracle`` router (the true activations pick the experts).  A static
    mask (one fixed mask per layer, K = 1) and every predicted, thresholded or routed line are deployable.  The
    line's registry entry decides (:meth:`apc.lines.Line.is_deployable`)."""
    from apc.lines import parse

    spec = parse(line)
    return bool(spec.impl.is_deployable(spec))


def token_positions(point: dict) -> np.ndarray:
    """``(tokens,)`` int64: the place of each of a point's scored tokens in the grid of all ``windows x
    (seq_len - 1)`` scorable positions (window-major), from ``windows``, ``window_tokens`` and ``score_from``
    (1, the default: every position; GRIFFIN: the first position after its prompt)."""
    n = int(point["windows"])
    per = np.asarray(point["window_tokens"], dtype=np.int64)
    start = int(point.get("score_from") or 1)
    if per.shape != (n,) or (per != per[0]).any():
        raise ValueError(f"a point's windows must score the same number of tokens each, got {per.tolist()} "
                         f"over {n} windows")
    row = int(per[0]) + start - 1  # seq_len - 1: the scorable positions of one window
    return (np.arange(n)[:, None] * row + (start - 1) + np.arange(int(per[0]))[None]).reshape(-1)


def common_tokens(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray]:
    """Indices into ``a``'s and ``b``'s per-token arrays of the tokens both scored (in window order)."""
    pa, pb = token_positions(a), token_positions(b)
    _, ia, ib = np.intersect1d(pa, pb, assume_unique=True, return_indices=True)
    return ia, ib


@dataclass(frozen=True)
class Place:
    """A line at a compute share: its points (one, or the two bracketing the share) and their weights."""

    points: tuple
    weights: tuple
    compute_share: float

    @property
    def exact(self) -> bool:
        return len(self.points) == 1


def at_share(points: list[dict], share: float, tol: float = TOLERANCE) -> Place | None:
    """The :class:`Place` of a line (its ``points``, dicts with ``compute_share``) at compute ``share``: the point
    nearest ``share`` if it lies within ``tol``, else the two points bracketing ``share`` with linear weights;
    None when ``share`` lies outside the line's points by more than ``tol``."""
    pts = sorted(points, key=lambda p: float(p["compute_share"]))
    if not pts:
        return None
    x = np.array([float(p["compute_share"]) for p in pts])
    i = int(np.argmin(np.abs(x - share)))
    if abs(x[i] - share) <= tol + 1e-12:  # within tol, whatever the rounding of the two shares
        return Place((pts[i],), (1.0,), float(x[i]))
    j = int(np.searchsorted(x, share))
    if j == 0 or j == len(x):
        return None
    t = (share - x[j - 1]) / (x[j] - x[j - 1])
    return Place((pts[j - 1], pts[j]), (1.0 - t, t), float(share))


def _aligned(a: Place, b: Place) -> list[np.ndarray | None]:
    """Per point of ``a`` then ``b``, the indices of its tokens that every point of both scored (None: all of
    them, when every point scored the same positions)."""
    pts = list(a.points) + list(b.points)
    pos = [token_positions(p) for p in pts]
    if all(len(q) == len(pos[0]) and (q == pos[0]).all() for q in pos[1:]):
        return [None] * len(pts)
    common = pos[0]
    for q in pos[1:]:
        common = np.intersect1d(common, q, assume_unique=True)
    return [np.searchsorted(q, common) for q in pos]


def paired_difference(a: Place, b: Place, *, block: int | None = None, n_boot: int = N_BOOT,
                      level: float = LEVEL, seed: int = 0, cache: dict | None = None) -> dict:
    """``a - b`` of every metric in :data:`METRICS` that both sides' points carry, on their common tokens, with a
    paired block-bootstrap interval: ``{"tokens", "units", "log_ratio": (diff, lo, hi), "kl": ..., "top1": ...}``
    (a metric a point lacks is left out; bounds NaN below 20 blocks).  Every point's per-token array is resampled
    with the same block starts, each side's replicates are the weighted sum of its points' (interpolation), and
    the interval is the percentile interval of the replicates' difference.  ``cache``: a dict kept between calls
    that holds each point's replicate means on all its tokens (the same starts for every point of that many
    tokens), so that a table of many pairs resamples each point once."""
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    pts = list(a.points) + list(b.points)
    w = np.array(list(a.weights) + [-v for v in b.weights])  # (P,): a's weights, minus b's
    idx = _aligned(a, b)
    block = int(block or pts[0].get("block_tokens") or BLOCK_TOKENS)
    n = len(pts[0]["token_nll"]) if idx[0] is None else len(idx[0])
    out = {"tokens": int(n), "units": int(n // block)}
    q = (1 - level) / 2
    for name, key in METRICS.items():
        if not all(key in p for p in pts):
            continue
        if idx[0] is None and cache is not None:  # every point on the same tokens: resample each once
            per = [_point_means(p, key, block, n_boot, seed, cache) for p in pts]
            mean = np.array([m for m, _ in per])
            reps = None if any(r is None for _, r in per) else np.stack([r for _, r in per])
        else:
            x = np.stack([np.asarray(p[key], np.float64) if k is None else np.asarray(p[key], np.float64)[k]
                          for p, k in zip(pts, idx)])  # (P, n)
            mean = x.mean(axis=1)
            reps = resample_means(x, block=block, n_boot=n_boot, seed=seed)  # (P, n_boot), same starts every row
        diff = float(w @ mean)
        if reps is None:
            out[name] = (diff, float("nan"), float("nan"))
        else:
            lo, hi = np.quantile(w @ reps, [q, 1 - q])
            out[name] = (diff, float(lo), float(hi))
    return out


def _point_means(point: dict, key: str, block: int, n_boot: int, seed: int, cache: dict):
    """``(mean, (n_boot,) replicate means or None)`` of one point's per-token ``key``, cached by the point's id."""
    k = (id(point), key, block, n_boot, seed)
    if k not in cache:
        x = np.asarray(point[key], np.float64)
        reps = resample_means(x, block=block, n_boot=n_boot, seed=seed)
        cache[k] = (float(x.mean()), None if reps is None else reps[0])
    return cache[k]


def lower_is_better(metric: str) -> bool:
    """Whether a lower value of ``metric`` is better (log ratio, KL) or a higher one (top-1)."""
    if metric not in METRICS:
        raise ValueError(f"unknown paired metric {metric!r}; expected one of {', '.join(METRICS)}")
    return metric != "top1"


def verdict(diff: float, lo: float, hi: float, metric: str = "log_ratio") -> str:
    """The reading of a paired difference ``a - b`` with interval ``[lo, hi]``: ``better`` (a is better and the
    interval excludes 0), ``worse``, ``tie`` (the interval holds 0) or ``n/a`` (no interval)."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "n/a"
    if lo <= 0 <= hi:
        return "tie"
    a_lower = hi < 0
    return "better" if a_lower == lower_is_better(metric) else "worse"
