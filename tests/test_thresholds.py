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


def test_kept_share_tables_from_one_histogram():
    from apc.extraction.thresholds import kept_share_tables

    g = torch.Generator().manual_seed(2)
    x = torch.randn(500, 200, generator=g)
    h = AbsQuantileHistogram(bits=10)
    h.update(x)
    tables = kept_share_tables({("down_in", 0): h, ("down_in", 1): h}, [0.4, 0.6, 0.8])
    assert [t["kept_share"] for t in tables] == [0.4, 0.6, 0.8]
    for t in tables:
        rows = t["projections"]["down_in"]
        assert [r["layer"] for r in rows] == [0, 1]
        kept = float((x.abs() >= rows[0]["threshold"]).double().mean())
        assert kept == pytest.approx(1 - rows[0]["achieved_sparsity"], abs=1e-12)
        assert abs(kept - t["kept_share"]) < 0.01
        assert rows[0] == threshold_table({("down_in", 0): h}, 1 - t["kept_share"])["down_in"][0]
    with pytest.raises(ValueError, match="kept_shares"):
        kept_share_tables({("down_in", 0): h}, [0.0])
