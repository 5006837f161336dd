"""Block-bootstrap confidence intervals of per-token figures: perplexity, KL from dense, top-1 agreement.

The resampling unit is a block of ``block`` consecutive scored tokens (a moving-block bootstrap):
neighbouring tokens are not independent, so resampling single tokens (or two windows) would give
intervals that are too narrow (or meaningless).  A scored sequence of ``n`` tokens holds
``n // block`` units; a resample draws that many block starts uniformly from ``0 .. n - block`` and
averages the tokens of the drawn blocks.  Every figure scored on the same tokens is resampled with
the SAME starts (``seed`` and ``n`` fix them), so a ratio to dense or a difference between two lines
gets a paired interval in which the shared token difficulty cancels.

A figure with fewer than :data:`MIN_UNITS` units carries no interval: its bounds are NaN (written
NaN in CSV, "n/a" when printed), never a number that looks like an interval.  Percentile intervals,
seeded, numpy only.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["N_BOOT", "LEVEL", "BLOCK_TOKENS", "MIN_UNITS", "n_units", "resample_means", "mean_interval",
           "ppl_interval", "ppl_ratio", "ppl_of", "fmt_interval"]

N_BOOT = 2000
LEVEL = 0.95
BLOCK_TOKENS = 32
MIN_UNITS = 20
_CHUNK = 2**24  # block starts drawn per chunk of resamples (bounds the index array's memory)


def n_units(n_tokens: int, block: int = BLOCK_TOKENS) -> int:
    """Resampling units (whole blocks) in ``n_tokens`` scored tokens."""
    if block < 1:
        raise ValueError(f"bootstrap block must be at least one token, got {block}")
    return int(n_tokens) // int(block)


def _series(values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"per-token values must be a non-empty (n,) or (series, n) array, got shape {x.shape}")
    return x


def resample_means(values, *, block: int = BLOCK_TOKENS, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray | None:
    """Moving-block bootstrap means of ``values: (S, n)`` (or ``(n,)``): S figures scored on the same n tokens.

    Returns ``(S, n_boot)`` resample means, every row resampled with the same block starts (paired),
    or None when ``n // block`` is below :data:`MIN_UNITS`.
    """
    x = _series(values)
    n = x.shape[1]
    m = n_units(n, block)
    if m < MIN_UNITS:
        return None
    csum = np.concatenate([np.zeros((len(x), 1)), np.cumsum(x, axis=1)], axis=1)
    block_sums = csum[:, block:] - csum[:, :-block]  # (S, n - block + 1): the sum of every block
    rng = np.random.default_rng(seed)
    out = np.empty((len(x), n_boot))
    step = max(1, _CHUNK // m)
    for b0 in range(0, n_boot, step):
        starts = rng.integers(0, n - block + 1, size=(min(step, n_boot - b0), m))
        out[:, b0 : b0 + len(starts)] = block_sums[:, starts].sum(axis=-1) / (m * block)
    return out


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    a = (1 - level) / 2
    lo, hi = np.quantile(samples, [a, 1 - a], axis=-1)
    return float(lo), float(hi)


_NA = (float("nan"), float("nan"))


def mean_interval(values, *, block: int = BLOCK_TOKENS, n_boot: int = N_BOOT, level: float = LEVEL,
                  seed: int = 0) -> tuple[float, float]:
    """Interval of the mean of per-token ``values: (n,)`` (KL, top-1 agreement); NaN when too few units."""
    means = resample_means(values, block=block, n_boot=n_boot, seed=seed)
    return _NA if means is None else _interval(means[0], level)


def ppl_interval(token_nll, *, block: int = BLOCK_TOKENS, n_boot: int = N_BOOT, level: float = LEVEL,
                 seed: int = 0) -> tuple[float, float]:
    """Interval of the perplexity ``exp(mean NLL)`` of per-token ``token_nll: (n,)`` (nats); NaN when too few units."""
    lo, hi = mean_interval(token_nll, block=block, n_boot=n_boot, level=level, seed=seed)
    return math.exp(lo) if lo == lo else lo, math.exp(hi) if hi == hi else hi


def ppl_ratio(nll_a, nll_b, *, block: int = BLOCK_TOKENS, n_boot: int = N_BOOT, level: float = LEVEL,
              seed: int = 0) -> tuple[float, float, float]:
    """``ppl(a) / ppl(b)`` of per-token NLLs ``nll_a, nll_b: (n,)`` scored on the same tokens, with its
    paired interval: ``(ratio, lo, hi)``; lo and hi NaN when too few units."""
    a, b = _series(nll_a)[0], _series(nll_b)[0]
    if a.shape != b.shape:
        raise ValueError(f"a paired ratio needs the same scored tokens on both sides ({a.size} vs {b.size} tokens)")
    ratio = math.exp(a.mean() - b.mean())
    means = resample_means(a - b, block=block, n_boot=n_boot, seed=seed)
    if means is None:
        return (ratio, *_NA)
    lo, hi = _interval(means[0], level)
    return ratio, math.exp(lo), math.exp(hi)


def ppl_of(nll_sums, tokens) -> float:
    """Token-weighted perplexity ``exp(sum(nll_sums) / sum(tokens))`` of per-window NLL sums."""
    s = np.asarray(nll_sums, dtype=np.float64)
    t = np.asarray(tokens, dtype=np.float64)
    if s.ndim != 1 or s.shape != t.shape or s.size == 0:
        raise ValueError(f"per-window NLL sums and token counts must be equal-length 1-D arrays, "
                         f"got shapes {s.shape} and {t.shape}")
    if (t <= 0).any():
        raise ValueError("every window must score at least one token")
    return float(np.exp(s.sum() / t.sum()))


def fmt_interval(value: float, lo: float, hi: float, fmt: str = "{:.3g}") -> str:
    """``value [lo, hi]``, or ``value [n/a]`` when the figure carries no interval."""
    if value is None or value != value:
        return "n/a"
    if lo is None or hi is None or lo != lo or hi != hi:
        return f"{fmt.format(value)} [n/a]"
    return f"{fmt.format(value)} [{fmt.format(lo)}, {fmt.format(hi)}]"
