import math

import pytest
import torch
import transformers

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
    assert sum(res["window_nll"]) / 3 == pytest.approx(res["nll"], rel=1e-12)
    # a random-init model over 128 tokens is close to uniform
    assert 0.5 * 128 < res["ppl"] < 2 * 128


def test_batching_scores_every_window(model):
    w = _windows(n=5)
    one = score_windows(model, w, bos=True, progress=False, batch_size=1)
    two = score_windows(model, w, bos=True, progress=False, batch_size=2)  # last batch has 1 window
    assert two["tokens"] == one["tokens"] == 5 * 16
    assert two["nll"] == pytest.approx(one["nll"], rel=1e-5)
    assert two["window_nll"] == pytest.approx(one["window_nll"], rel=1e-5)


def test_token_weighting_not_window_mean(model):
    # windows are equal length, so token weighting == window mean; check the sum really spans all windows
    w = _windows(n=4)
    full = score_windows(model, w, bos=True, progress=False)
    parts = [score_windows(model, w[i : i + 1], bos=True, progress=False)["nll"] for i in range(4)]
    assert full["nll"] == pytest.approx(sum(parts) / 4, rel=1e-6)


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
