"""KL(dense || masked) and top-1 agreement against a stored dense reference, on a tiny model."""

import copy
import math

import numpy as np
import pytest
import torch
import transformers

from apc.perplexity.divergence import load_reference, save_reference
from apc.perplexity.protocol import score
from apc.perplexity.scoring import score_windows

VOCAB = 128


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=44, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2)
    dense = transformers.LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a sharper distribution than the random init's near-uniform one
        dense.lm_head.weight.mul_(20)
    other = copy.deepcopy(dense)
    with torch.no_grad():
        other.lm_head.weight.add_(torch.randn_like(other.lm_head.weight) * 0.3)
    return dense, other


def _windows(n=3, s=17):
    w = torch.randint(2, VOCAB, (n, s), generator=torch.Generator().manual_seed(1))
    w[:, 0] = 1
    return w


def _reference(model, w, kind, k=64, tmp_path=None):
    res = score_windows(model, w, bos=True, progress=False, keep_reference=(kind, k))
    path = tmp_path / f"{kind}{k}.npz"
    save_reference(path, res["reference"], kind=kind, seq_len=w.shape[1])
    return load_reference(path, res["tokens"], w.shape[1])


def _manual_kl(dense, other, w):
    with torch.no_grad():
        p = torch.log_softmax(dense(w).logits[:, :-1].double(), -1).reshape(-1, VOCAB)
        q = torch.log_softmax(other(w).logits[:, :-1].double(), -1).reshape(-1, VOCAB)
    return (p.exp() * (p - q)).sum(-1).numpy(), (p.argmax(-1) == q.argmax(-1)).numpy()


def test_exact_kl_matches_a_hand_computation_and_is_zero_for_dense(models, tmp_path):
    dense, other = models
    w = _windows()
    ref = _reference(dense, w, "exact", tmp_path=tmp_path)
    assert ref["logprobs"].shape == (48, VOCAB) and ref["kind"] == "exact"
    same = score_windows(dense, w, bos=True, progress=False, reference=ref)
    assert (same["token_kl"] == 0).all() and same["token_top1"].all()
    res = score_windows(other, w, bos=True, progress=False, reference=ref)
    kl, agree = _manual_kl(dense, other, w)
    assert res["token_kl"] == pytest.approx(kl, rel=1e-4, abs=1e-6)
    assert (res["token_top1"] == agree).all()
    assert 0.01 < kl.mean() and 0 < agree.mean() < 1  # the perturbation is visible, not total


def test_topk_reference_is_a_lower_bound_and_exact_when_the_bucket_is_one_token(models, tmp_path):
    dense, other = models
    w = _windows()
    exact = score_windows(other, w, bos=True, progress=False, reference=_reference(dense, w, "exact", tmp_path=tmp_path))
    top8 = score_windows(other, w, bos=True, progress=False, reference=_reference(dense, w, "topk", 8, tmp_path))
    assert (top8["token_kl"] <= exact["token_kl"] + 1e-6).all()
    assert top8["token_kl"].mean() < exact["token_kl"].mean()
    assert (top8["token_top1"] == exact["token_top1"]).all()  # dense's top-1 is always in its top-k
    full = _reference(dense, w, "topk", VOCAB - 1, tmp_path)  # k + 1 outcomes = the vocabulary
    assert full["logprobs"].shape == (48, VOCAB)
    res = score_windows(other, w, bos=True, progress=False, reference=full)
    assert res["token_kl"] == pytest.approx(exact["token_kl"], rel=1e-4, abs=1e-6)
    # an exact run also measures the approximation: the top-8 KL from the exact reference's own top 8
    checked = score(other, w, "dense", bos=True, reference=_reference(dense, w, "exact", tmp_path=tmp_path),
                    check_top_k=8)
    assert checked["kl_topk"] == pytest.approx(top8["token_kl"].mean(), rel=1e-5) and checked["kl_topk_k"] == 8
    assert checked["kl_topk"] < checked["kl"]


def test_reference_checks_windows_and_length(models, tmp_path):
    dense, _ = models
    w = _windows()
    res = score_windows(dense, w, bos=True, progress=False, keep_reference=("exact", 64))
    save_reference(tmp_path / "r.npz", res["reference"], kind="exact", seq_len=17)
    assert load_reference(tmp_path / "r.npz", 16, 17)["top1"].shape == (16,)  # the first window's rows
    with pytest.raises(ValueError, match="covers 48 scored tokens, 64 needed"):
        load_reference(tmp_path / "r.npz", 64, 17)
    with pytest.raises(ValueError, match="windows of 17 tokens, scoring windows of 33"):
        load_reference(tmp_path / "r.npz", 32, 33)


def test_score_keeps_per_token_figures_with_block_intervals(models, tmp_path):
    dense, other = models
    w = _windows()
    ref = _reference(dense, w, "exact", tmp_path=tmp_path)
    res = score(other, w, "dense", bos=True, reference=ref, block_tokens=2)  # 24 blocks of 2 tokens
    assert res["units"] == 24 and res["kl_reference"] == "exact"
    assert len(res["token_nll"]) == len(res["token_kl"]) == len(res["token_top1"]) == 48
    assert res["kl"] == pytest.approx(np.mean(res["token_kl"]), abs=1e-5)
    assert res["kl_lo"] <= res["kl"] <= res["kl_hi"] and res["top1_lo"] <= res["top1"] <= res["top1_hi"]
    assert res["ppl_lo"] <= res["ppl"] <= res["ppl_hi"]
    few = score(other, w, "dense", bos=True, reference=ref)  # 48 tokens: one block of 32, no interval
    assert few["units"] == 1 and math.isnan(few["kl_lo"]) and math.isnan(few["ppl_hi"])
