"""Bootstrap confidence intervals of perplexities over test windows.

Windows are the resampling unit: tokens inside a window are not independent,
windows of different articles nearly are.  A perplexity is
``exp(sum of NLL sums / sum of tokens)`` over the resampled windows; a ratio of
two perplexities on the same windows (a masked model against dense) is
resampled *paired*, with the same window indices for both, so the shared
window difficulty cancels.  Percentile intervals, seeded, numpy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ["N_BOOT", "LEVEL", "bootstrap_ppl", "bootstrap_ratio", "ppl_of"]

N_BOOT = 2000
LEVEL = 0.95


def _check(nll_sums, tokens) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(nll_sums, dtype=np.float64)
    t = np.asarray(tokens, dtype=np.float64)
    if s.ndim != 1 or s.shape != t.shape or s.size == 0:
        raise ValueError(f"per-window NLL sums and token counts must be equal-length 1-D arrays, "
                         f"got shapes {s.shape} and {t.shape}")
    if (t <= 0).any():
        raise ValueError("every window must score at least one token")
    return s, t


def ppl_of(nll_sums, tokens) -> float:
    """Token-weighted perplexity ``exp(sum(nll_sums) / sum(tokens))``."""
    s, t = _check(nll_sums, tokens)
    return float(np.exp(s.sum() / t.sum()))


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _interval(samples: np.ndarray, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"confidence level must be in (0, 1), got {level}")
    a = (1 - level) / 2
    lo, hi = np.quantile(samples, [a, 1 - a])
    return float(lo), float(hi)


def bootstrap_ppl(nll_sums, tokens, *, n_boot: int = N_BOOT, level: float = LEVEL,
                  seed: int = 0) -> tuple[float, float]:
    """Percentile interval of the perplexity.

    ``nll_sums: (n_windows,)`` summed NLL (nats) per window, ``tokens: (n_windows,)``
    scored tokens per window.  Returns ``(lo, hi)``.
    """
    s, t = _check(nll_sums, tokens)
    idx = _indices(len(s), n_boot, seed)
    return _interval(np.exp(s[idx].sum(1) / t[idx].sum(1)), level)


def bootstrap_ratio(nll_a, tokens_a, nll_b, tokens_b, *, n_boot: int = N_BOOT, level: float = LEVEL,
                    seed: int = 0) -> tuple[float, float, float]:
    """Paired interval of ``ppl(a) / ppl(b)`` on the same windows: ``(ratio, lo, hi)``."""
    sa, ta = _check(nll_a, tokens_a)
    sb, tb = _check(nll_b, tokens_b)
    if sa.shape != sb.shape or not np.array_equal(ta, tb):
        raise ValueError("a paired ratio needs the same windows on both sides "
                         f"({len(sa)} vs {len(sb)} windows, or different token counts)")
    idx = _indices(len(sa), n_boot, seed)
    log_ratio = (sa[idx].sum(1) - sb[idx].sum(1)) / ta[idx].sum(1)
    lo, hi = _interval(np.exp(log_ratio), level)
    return float(np.exp((sa.sum() - sb.sum()) / ta.sum())), lo, hi
