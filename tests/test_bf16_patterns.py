"""In a bfloat16 model the stored patterns equal the masks the perplexity hooks apply."""

import numpy as np
import pytest
import torch

from apc.common.projections import mlp_projections, projection_module
from apc.extraction.extract import calibrate_thresholds, extract_patterns
from apc.extraction.patterns import PatternReader, pattern_path
from apc.perplexity.masking import install_interventions

PROJS = ["gate", "up", "down"]


def hook_masks(model, windows, proj, thresholds):
    """``(n_tokens, width) bool``: where the sparse hook of ``proj`` in layer 0 keeps the value.

    Layer 0 only: its input is the model's own, while later layers see the masked earlier ones."""
    kept = []
    with install_interventions(model, "sparse", projections=[proj], thresholds=thresholds,
                               skip_first_position=False):
        h = projection_module(mlp_projections(model)[0], proj).register_forward_hook(
            lambda m, a, out: kept.append(out.reshape(-1, out.shape[-1]) != 0))
        with torch.inference_mode():
            for w in windows:
                model(w.unsqueeze(0))
        h.remove()
    return torch.cat(kept).numpy()


@pytest.mark.parametrize("proj", PROJS)
def test_bf16_patterns_equal_hook_masks(tiny_llama, tmp_path, proj):
    model = tiny_llama.to(torch.bfloat16)
    windows = torch.randint(0, 128, (6, 24), generator=torch.Generator().manual_seed(1))
    table = calibrate_thresholds(model, windows, PROJS, 0.5, bits=10, skip_first=False)
    extract_patterns(model, windows, table, PROJS, tmp_path, "train", {}, skip_first=False)
    thresholds = {p: [r["threshold"] for r in table["projections"][p]] for p in PROJS}
    # The thresholds are float32 histogram edges that bf16 cannot hold: a bf16 comparison would differ.
    assert torch.tensor(thresholds[proj][0]).bfloat16().float().item() != thresholds[proj][0]
    mask = hook_masks(model, windows, proj, thresholds)
    stored = PatternReader(pattern_path(tmp_path, "train", proj, 0)).bits()
    assert stored.shape == mask.shape
    assert 0.2 < stored.mean() < 0.8
    np.testing.assert_array_equal(stored, mask)
