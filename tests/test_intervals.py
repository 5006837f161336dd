"""Block-bootstrap intervals: coverage on autocorrelated NLLs, pairing, and no interval below 20 units."""

import math

import numpy as np
import pytest

from apc.perplexity.intervals import (MIN_UNITS, fmt_interval, mean_interval, n_units, ppl_interval, ppl_ratio,
                                      resample_means)

MU, RHO, N_TOKENS, SEEDS = 3.0, 0.3, 1022, 200


def _ar1(n_series: int, n: int, rho: float, seed: int) -> np.ndarray:
    """``(n_series, n)`` stationary AR(1) sequences around ``MU`` (innovation sd 1), one per row."""
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal((n_series, n))
    x = np.empty_like(eps)
    x[:, 0] = eps[:, 0] / math.sqrt(1 - rho**2)
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + eps[:, t]
    return MU + x


def _coverage(block: int) -> float:
    """Share of 200 AR(1) NLL sequences whose 95 % interval of the mean covers the known mean."""
    x = _ar1(SEEDS, N_TOKENS, RHO, seed=0)
    means = resample_means(x, block=block, n_boot=500, seed=1)  # (200, 500)
    lo, hi = np.quantile(means, [0.025, 0.975], axis=1)
    return float(np.mean((lo <= MU) & (MU <= hi)))


def test_block_unit_covers_the_mean_of_autocorrelated_nlls():
    assert n_units(N_TOKENS, 32) == 31
    cover = _coverage(32)
    assert 0.90 <= cover <= 0.98, cover


def test_single_token_unit_undercovers_the_same_sequences():
    # tokens resampled one by one ignore the autocorrelation: the interval is ~1.36x too narrow
    assert _coverage(1) < 0.90


def test_fewer_than_20_units_carry_no_interval():
    x = _ar1(1, 32 * (MIN_UNITS - 1) + 31, RHO, seed=2)[0]  # 19 whole blocks
    assert resample_means(x, block=32) is None
    assert all(math.isnan(v) for v in mean_interval(x, block=32))
    assert all(math.isnan(v) for v in ppl_interval(x, block=32))
    r, lo, hi = ppl_ratio(x, x - 0.1, block=32)
    assert r == pytest.approx(math.exp(0.1)) and math.isnan(lo) and math.isnan(hi)
    assert fmt_interval(r, lo, hi) == "1.11 [n/a]"
    assert not math.isnan(mean_interval(np.append(x, 1.0), block=32)[0])  # 20 units: an interval


def test_paired_ratio_is_tighter_than_unpaired_and_covers_truth():
    base = _ar1(1, N_TOKENS, RHO, seed=3)[0] * 0.8                   # token difficulty shared by both
    masked = base + 0.2 + np.random.default_rng(4).normal(0, 0.05, N_TOKENS)  # +0.2 nats per token
    ratio, lo, hi = ppl_ratio(masked, base)
    assert ratio == pytest.approx(math.exp(masked.mean() - base.mean()))
    assert lo <= math.exp(0.2) <= hi
    a_lo, a_hi = ppl_interval(masked)
    b_lo, b_hi = ppl_interval(base)
    assert (hi - lo) < 0.2 * (a_hi / b_lo - a_lo / b_hi)
    # the same seed and length draw the same blocks: resampling together or apart gives the same means
    both = resample_means(np.stack([masked, base]), n_boot=50)
    assert np.allclose(both[1], resample_means(base, n_boot=50)[0], rtol=1e-12)
    with pytest.raises(ValueError, match="same scored tokens"):
        ppl_ratio(masked[:500], base)
