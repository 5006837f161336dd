"""CHESS: channel-wise thresholds on ``|act(gate)| * mean|up|``."""

import torch

from apc.lines import parse
from apc.perplexity.calibrate import layer_mlps
from lines.contract import check_line, ids, mlp_inputs


def test_chess_meets_the_line_contract(tiny_llama):
    check_line(tiny_llama, "chess")


def test_chess_keeps_the_channels_whose_gate_times_up_scale_is_largest(tiny_llama):
    spec = parse("chess")
    mlps = layer_mlps(tiny_llama)
    samples = mlp_inputs(tiny_llama, ids(seed=3))
    cal = spec.impl.calibrate(mlps, samples, [0.5], {}, lines=[spec])
    h = samples[0]
    score = mlps[0].act(mlps[0].gate(h)).abs() * cal["up_scale"][0]
    kept = (score >= cal["0.5"][0]).float().mean()
    assert abs(float(kept) - 0.5) < 0.02  # the threshold keeps half of the calibration sample
    # the scale is the mean |up| of each channel over the calibration tokens
    assert torch.allclose(cal["up_scale"][0], mlps[0].up(h).abs().mean(dim=0))
