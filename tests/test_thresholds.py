import numpy as np
import pytest
import torch

from apc.extraction.thresholds import AbsQuantileHistogram, threshold_table


@pytest.mark.parametrize("q", [0.3, 0.5, 0.9])
def test_streaming_quantile_is_exact_and_close(q):
    g = torch.Generator().manual_seed(1)
    chunks = [torch.randn(200, 300, generator=g) * torch.rand(1, 300, generator=g) ** 3 for _ in range(5)]
    h = AbsQuantileHistogram(bits=10)
    for c in chunks:
        h.update(c)
    t, achieved = h.quantile(q)
    allx = torch.cat(chunks).abs()
    true_share = float((allx < t).double().mean())
    assert achieved == pytest.approx(true_share, abs=1e-12)  # the reported share is exact
    assert abs(achieved - q) < 0.01


def test_bfloat16_and_table():
    h = AbsQuantileHistogram(bits=8)
    h.update(torch.randn(1000, 64).to(torch.bfloat16))
    table = threshold_table({("gate", 0): h}, 0.5)
    row = table["gate"][0]
    assert row["layer"] == 0 and row["threshold"] > 0 and abs(row["achieved_sparsity"] - 0.5) < 0.01


def test_empty_histogram_errors():
    with pytest.raises(ValueError, match="no values"):
        AbsQuantileHistogram().quantile(0.5)
