import math

import numpy as np

import pytest
import torch
import transformers

from apc.perplexity.intervals import ppl_of
from apc.perplexity.scoring import score_windows


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=44, num_hidden_layers=3,
                                   num_attention_heads=4, num_key_value_heads=2)
    return transformers.LlamaForCausalLM(cfg).eval()


def _windows(n=3, s=17, bos=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    w = torch.randint(2, 128, (n, s), generator=g)
    if bos:
        w[:, 0] = 1
    return w


def _manual(model, windows):
    total, count = 0.0, 0
    with torch.no_grad():
        for w in windows:
            logp = torch.log_softmax(model(w[None]).logits[0].double(), dim=-1)
            total += -logp[:-1].gather(1, w[1:, None]).sum().item()
            count += w.numel() - 1
    return total / count, count


def test_dense_matches_manual_log_softmax(model):
    w = _windows()
    res = score_windows(model, w, bos=True, progress=False)
    nll, count = _manual(model, w)
    assert res["tokens"] == count == 3 * 16
    assert res["windows"] == 3 and res["seq_len"] == 17
    assert res["nll"] == pytest.approx(nll, rel=1e-6, abs=0)
    assert res["ppl"] == pytest.approx(math.exp(nll), rel=1e-6)
    assert sum(res["window_nll_sum"]) / sum(res["window_tokens"]) == pytest.approx(res["nll"], rel=1e-12)
    assert res["window_tokens"] == [16, 16, 16]
    # per-token NLLs in window order: window w's positions 1..16 are tokens 16w .. 16w + 15
    assert res["token_nll"].shape == (48,) and res["token_nll"].mean() == pytest.approx(res["nll"], rel=1e-12)
    with torch.no_grad():
        logp = torch.log_softmax(model(w[1:2]).logits[0].double(), dim=-1)
    assert res["token_nll"][16 + 4] == pytest.approx(-logp[4, w[1, 5]].item(), rel=1e-5)
    # a random-init model over 128 tokens is close to uniform
    assert 0.5 * 128 < res["ppl"] < 2 * 128


def test_batching_scores_every_window(model):
    w = _windows(n=5)
    one = score_windows(model, w, bos=True, progress=False, batch_size=1)
    two = score_windows(model, w, bos=True, progress=False, batch_size=2)  # last batch has 1 window
    assert two["tokens"] == one["tokens"] == 5 * 16
    assert two["nll"] == pytest.approx(one["nll"], rel=1e-5)
    assert two["window_nll_sum"] == pytest.approx(one["window_nll_sum"], rel=1e-5)


def test_token_weighting_not_window_mean(model):
    # windows of unequal length: a short window (4 tokens) and a long one (32) scored separately
    g = torch.Generator().manual_seed(3)
    short = torch.randint(1, 128, (1, 5), generator=g)
    long = torch.randint(1, 128, (1, 33), generator=g)
    a = score_windows(model, short, bos=False, progress=False)
    b = score_windows(model, long, bos=False, progress=False)
    sums = a["window_nll_sum"] + b["window_nll_sum"]
    toks = a["window_tokens"] + b["window_tokens"]
    assert toks == [4, 32]
    pooled = ppl_of(sums, toks)
    manual_a, _ = _manual(model, short)
    manual_b, _ = _manual(model, long)
    assert pooled == pytest.approx(math.exp((4 * manual_a + 32 * manual_b) / 36), rel=1e-6)
    window_mean = math.exp((a["nll"] + b["nll"]) / 2)
    assert abs(pooled - window_mean) > 1e-3 * pooled  # the window mean would be a different number


def test_no_bos_scores_same_positions(model):
    w = _windows(bos=False)
    res = score_windows(model, w, bos=False, progress=False)
    nll, count = _manual(model, w)
    assert res["tokens"] == count and res["bos"] is False
    assert res["nll"] == pytest.approx(nll, rel=1e-6)


def test_validation(model):
    with pytest.raises(ValueError, match="column 0"):
        score_windows(model, _windows(bos=False), bos=True, progress=False)
    with pytest.raises(ValueError, match="2-D integer"):
        score_windows(model, torch.zeros(3, 5), bos=False, progress=False)
    with pytest.raises(ValueError, match=">= 2 tokens"):
        score_windows(model, torch.ones(3, 1, dtype=torch.long), bos=False, progress=False)


def test_progress_bar_runs(model):
    res = score_windows(model, _windows(n=2), bos=True, progress=True)
    assert res["windows"] == 2


def test_a_batch_of_cells_scores_each_cell_as_alone(model):
    """Cells scored together with one model load give exactly the perplexities of one cell per job."""
    from apc.perplexity.batches import batch_entry
    from apc.perplexity.protocol import score_cell, score_cells

    w = _windows(n=2, s=17)
    g = torch.Generator().manual_seed(4)
    thresholds = {q: [0.02, 0.02, 0.02] for q in ("gate", "up")}
    cells = [{"centroids": {q: torch.rand(3, 4, 44, generator=g) < 0.6 for q in ("gate", "up")}, "seed": s}
             for s in (0, 1)]
    cells.append({"centroids": {q: torch.rand(1, 2, 44, generator=g) < 0.5 for q in ("gate", "up")}, "seed": 2})
    kw = dict(bos=True, projections=["gate", "up"], thresholds=thresholds)
    modes = ["centroid", "centroid_only", "random"]
    dense_before = score_windows(model, w, bos=True, progress=False)["ppl"]
    batch = score_cells(model, w, modes, cells=cells, **kw)
    alone = [score_cell(model, w, modes, **kw, **cell) for cell in reversed(cells)][::-1]
    for b, a in zip(batch, alone):
        for m in modes:
            assert b[m]["window_nll_sum"] == a[m]["window_nll_sum"] and b[m]["ppl"] == a[m]["ppl"], m
    assert batch[0]["centroid_only"]["ppl"] != batch[1]["centroid_only"]["ppl"]  # the cells differ
    assert score_windows(model, w, bos=True, progress=False)["ppl"] == dense_before  # no hook left behind
    # one file per cell out of the batch file
    stored = {"cuda_max_memory_allocated_bytes": 7, "cells": [
        {"scope": "per_layer", "method": "apc", "k": 4, "density": 0.6, "seed": s, "modes": r} for s, r in enumerate(batch)]}
    one = batch_entry(stored, scope="per_layer", method="apc", k=4, density=0.6, seed=1)
    assert one["modes"] is batch[1] and one["batch_cells"] == 3 and one["cuda_max_memory_allocated_bytes"] == 7
    with pytest.raises(KeyError, match="no cell"):
        batch_entry(stored, scope="pooled", method="apc", k=4, density=0.6, seed=1)
