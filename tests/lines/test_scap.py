"""SCAP: mode-centred input thresholds, the shift folded into a bias."""

import torch

from apc.lines.scap import channel_modes
from lines.contract import check_line, point


def test_scap_meets_the_line_contract(tiny_llama):
    check_line(tiny_llama, "scap")


def test_channel_modes_find_each_columns_peak():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([-2.0, 0.0, 3.0])
    h = centres + 0.05 * torch.randn(20000, 3, generator=g)
    h[:2000, 2] = 10.0 * torch.rand(2000, generator=g)  # a tail that must not move the mode
    assert torch.allclose(channel_modes(h), centres, atol=0.1)


def test_scap_counts_its_bias_and_differs_from_an_uncentred_threshold(tiny_llama):
    res, _ = point(tiny_llama, "scap", 0.6)
    assert res["rotation_flops_share"] > 0  # the bias add is counted
    assert res["compute_share"] > res["ffn_flops_share"]
