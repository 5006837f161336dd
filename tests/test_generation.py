import math

import numpy as np
import pytest
import torch

from apc.perplexity.generation import (COLUMNS, agreement, columns, decode_samples, dense_prefill, generation_point,
                                       greedy, sample_indices, select_prompts)
from apc.perplexity.maskargs import Masks
from apc.perplexity.masking import MODES, install_interventions

N_LAYERS, WIDTH, D_MODEL = 3, 44, 32  # the tiny_llama fixture's shape
NEW = 12


@pytest.fixture
def windows():
    g = torch.Generator().manual_seed(1)
    w = torch.randint(2, 128, (6, 64), generator=g)
    w[:, 0] = 1  # BOS
    return w


@pytest.fixture
def prompts(windows):
    return select_prompts(windows, 24, 12, bos=True, seed=0)


@pytest.fixture
def dense(tiny_llama, prompts):
    return greedy(tiny_llama, prompts, NEW)


def _random(model, share, seed=0):
    zero = {"down_in": [0.0] * N_LAYERS}
    return lambda: install_interventions(model, "random_only", projections=["down_in"], thresholds=zero,
                                         random_density={"down_in": share}, seed=seed, skip_first_position=False)


def test_prompts_come_from_the_windows(windows, prompts):
    assert prompts.ids.shape == (24, 12) and prompts.dense_positions == 11
    assert (prompts.ids[:, 0] == 1).all()
    for i in range(prompts.n):  # BOS, then 11 consecutive text tokens of window[i] from start[i]
        w, s = prompts.window[i], prompts.start[i]
        assert torch.equal(prompts.ids[i, 1:], windows[w, s : s + 11])
        assert s >= 1 and (s - 1) % 11 == 0
    keys = list(zip(prompts.window, prompts.start))
    assert keys == sorted(keys) and len(set(keys)) == prompts.n  # window order, no chunk twice
    again = select_prompts(windows, 24, 12, bos=True, seed=0)
    other = select_prompts(windows, 24, 12, bos=True, seed=1)
    assert torch.equal(again.ids, prompts.ids) and not torch.equal(other.ids, prompts.ids)


def test_prompts_without_bos_are_text_only(windows):
    p = select_prompts(windows, 30, 10, bos=False, seed=0)  # 6 chunks of 10 per window of 64
    assert p.ids.shape == (30, 10) and (p.start % 10 == 0).all()
    assert all(torch.equal(p.ids[i], windows[p.window[i], p.start[i] : p.start[i] + 10]) for i in range(p.n))


@pytest.mark.parametrize("bad, match", [
    (dict(n_prompts=40), "40 prompts of 12 tokens need more test text than 6 window"),  # 6 windows x 5 chunks
    (dict(prompt_len=64), "prompt_len must lie in"),
    (dict(prompt_len=1), "prompt_len must lie in"),
])
def test_bad_prompt_requests_fail_clearly(windows, bad, match):
    kw = {"n_prompts": 24, "prompt_len": 12, **bad}
    with pytest.raises(ValueError, match=match):
        select_prompts(windows, kw["n_prompts"], kw["prompt_len"], bos=True)


def test_cached_greedy_equals_full_recompute(tiny_llama, prompts, dense):
    full = greedy(tiny_llama, prompts, NEW, route="recompute", batch_size=5)
    assert dense.shape == (24, NEW) and dense.dtype == torch.int64
    assert torch.equal(full, dense)
    # and an explicit argmax loop over full logits, one prompt
    seq = prompts.ids[:1]
    with torch.inference_mode():
        for _ in range(NEW):
            seq = torch.cat([seq, tiny_llama(seq).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(seq[0, prompts.prompt_len:], dense[0])


def test_batching_does_not_change_the_tokens(tiny_llama, prompts, dense):
    assert torch.equal(greedy(tiny_llama, prompts, NEW, batch_size=7), dense)


def test_share_one_agrees_fully(tiny_llama, prompts, dense):
    res = generation_point(tiny_llama, prompts, dense, _random(tiny_llama, 1.0))
    assert res["gen_agree"] == 1.0 and res["gen_prefix"] == NEW
    assert (res["prefix"] == NEW).all() and torch.equal(res["tokens"], dense)


def test_random_masks_agree_less(tiny_llama, prompts, dense):
    res = generation_point(tiny_llama, prompts, dense, _random(tiny_llama, 0.3))
    assert res["gen_agree"] < 1.0 and res["gen_prefix"] < NEW
    assert ((res["prefix"] >= 0) & (res["prefix"] <= NEW)).all()
    assert res["prefix"].mean() == pytest.approx(res["gen_prefix"])
    assert np.all(res["prefix"] / NEW <= res["agree"] + 1e-12)  # the prefix agrees, and maybe more after it
    for name in ("gen_prefix", "gen_agree"):
        assert res[f"{name}_lo"] <= res[name] <= res[f"{name}_hi"]
        assert res[f"{name}_lo"] < res[f"{name}_hi"]
    cols = columns(res)
    assert list(cols) == list(COLUMNS) and cols["gen_prompts"] == 24 and cols["gen_new_tokens"] == NEW
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in cols.values())


def test_masks_apply_to_every_decode_step_only(tiny_llama, prompts, dense):
    handles = []

    def masking():
        handles.append(_random(tiny_llama, 0.5)())
        return handles[-1]

    greedy(tiny_llama, prompts, NEW, masking=masking, batch_size=10)
    assert len(handles) == 3  # once per batch
    stats = [h.stats()["down_in"] for h in handles]
    # one masked position per prompt and new token, in every layer: the dense prefill is not masked
    assert sum(s["elements"] for s in stats) == prompts.n * NEW * WIDTH * N_LAYERS
    assert all(s["kept_fraction"] == pytest.approx(0.5, abs=0.02) for s in stats)


def test_agreement_counts_by_hand():
    dense = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    other = np.array([[1, 2, 9, 4], [0, 6, 7, 8]])
    res = agreement(other, dense)
    assert res["prefix"].tolist() == [2, 0] and res["agree"].tolist() == [0.75, 0.75]
    assert res["gen_prefix"] == 1.0 and res["gen_agree"] == 0.75
    assert math.isnan(res["gen_prefix_lo"])  # two prompts carry no interval
    with pytest.raises(ValueError, match="same"):
        agreement(other[:, :3], dense)


def _mode_masks(mode: str, prompt: int) -> Masks:
    g = torch.Generator().manual_seed(2)
    t = {"down_in": [0.005] * N_LAYERS}
    cents = {"down_in": torch.rand(1, 4, WIDTH, generator=g) < 0.5}
    q = torch.linalg.qr(torch.randn(D_MODEL, D_MODEL, generator=g))[0]
    scores_k, scores_w = torch.nn.Linear(D_MODEL, 4), torch.nn.Linear(D_MODEL, WIDTH)
    args = {"sparse": {}, "centroid": dict(centroids=cents), "centroid_only": dict(centroids=cents),
            "random": dict(random_density={"down_in": .5}), "random_only": dict(random_density={"down_in": .5}),
            "threshold": dict(keep_thresholds=t),
            "predicted": dict(centroids=cents, predictors={"down_in": [scores_k] * N_LAYERS}),
            "neuron_predicted": dict(predictors={"down_in": [scores_w] * N_LAYERS}, neuron_density={"down_in": .5}),
            "cats": dict(gate_thresholds={"down_in": [0.01] * N_LAYERS}),
            "teal": dict(keep_thresholds=t, input_thresholds=[0.3] * N_LAYERS),
            "wina": dict(keep_thresholds=t, input_thresholds=[0.3] * N_LAYERS,
                         input_scale=[torch.ones(D_MODEL)] * N_LAYERS, mid_scale=[torch.ones(WIDTH)] * N_LAYERS),
            "larosa": dict(rotations=[q] * N_LAYERS, input_share=.5, keep_share=.5),
            "griffin": dict(keep_share=.5, prompt=prompt)}
    return Masks(mode, projections=("down_in",), thresholds=t, **args[mode])


@pytest.mark.parametrize("mode", [m for m in MODES if m not in ("dense", "griffin")])
def test_every_position_wise_mode_runs_on_one_position_steps(tiny_llama, prompts, dense, mode):
    handles = []
    masks = _mode_masks(mode, prompts.dense_positions)

    def masking():
        handles.append(install_interventions(tiny_llama, masks, skip_first_position=False))
        return handles[-1]

    res = generation_point(tiny_llama, prompts, dense, masking)
    s = handles[0].stats()["down_in"]
    assert s["elements"] == prompts.n * NEW * WIDTH * N_LAYERS and s["kept_fraction"] < 1.0
    assert 0.0 <= res["gen_agree"] <= 1.0


def test_prompt_built_masks_run_through_full_recompute(tiny_llama, prompts, dense):
    masks = _mode_masks("griffin", prompts.dense_positions)
    masking = lambda: install_interventions(tiny_llama, masks, skip_first_position=False)  # noqa: E731
    with pytest.raises(ValueError, match="leaves none after a prompt"):  # its mask needs the prompt in the call
        greedy(tiny_llama, prompts, NEW, masking=masking)
    res = generation_point(tiny_llama, prompts, dense, masking, route="recompute")
    assert res["gen_agree"] < 1.0
    full = Masks("griffin", projections=("down_in",), thresholds=masks.thresholds, keep_share=1.0,
                 prompt=prompts.dense_positions)
    same = generation_point(tiny_llama, prompts, dense, lambda: install_interventions(
        tiny_llama, full, skip_first_position=False), route="recompute")
    assert same["gen_agree"] == 1.0


def test_samples_decode_side_by_side(prompts, dense):
    class Tok:  # token id -> "<id>"; special token 1 (BOS) dropped when asked
        def decode(self, ids, skip_special_tokens=False):
            return " ".join(f"<{i}>" for i in ids if not (skip_special_tokens and i == 1))

    idx = sample_indices(prompts.n, 3, seed=0)
    assert len(set(idx)) == 3 and idx == sorted(idx) and sample_indices(prompts.n, 3, seed=0) == idx
    other = dense.clone()
    other[:, 4:] = 0
    rows = decode_samples(Tok(), prompts, {"dense": dense, "line": other}, idx)
    assert [r["index"] for r in rows] == idx
    r = rows[0]
    assert r["prompt"] == " ".join(f"<{int(i)}>" for i in prompts.ids[idx[0], 1:])
    assert r["continuations"]["dense"]["prefix"] == NEW
    assert r["continuations"]["line"]["prefix"] == (4 if (dense[idx[0], 4:] != 0).any() else NEW)
    assert r["continuations"]["line"]["text"].startswith(" ".join(f"<{int(i)}>" for i in dense[idx[0], :4]))
    with pytest.raises(ValueError, match="no 'dense' entry"):
        decode_samples(Tok(), prompts, {"line": other}, idx)


def test_the_prefill_route_masks_the_prefill_too(tiny_llama, prompts, dense):
    handles = []

    def masking():
        handles.append(_random(tiny_llama, 0.5)())
        return handles[-1]

    greedy(tiny_llama, prompts, NEW, masking=masking, route="prefill")
    # the first prompt_len - 1 positions went through the masks too, then one position per new token
    assert handles[0].stats()["down_in"]["elements"] == prompts.n * (prompts.dense_positions + NEW) * WIDTH * N_LAYERS
    assert not handles[0]._handles  # removed after the batch
    with pytest.raises(ValueError, match="unknown route 'fast'"):
        greedy(tiny_llama, prompts, NEW, masking=masking, route="fast")


def test_a_kept_dense_prefill_gives_the_same_tokens(tiny_llama, prompts, dense):
    from apc.perplexity.generation import dense_prefill

    caches = dense_prefill(tiny_llama, prompts, batch_size=10)
    assert len(caches.caches) == 3 and all(c.get_seq_length() == prompts.dense_positions for c in caches.caches)
    masked = greedy(tiny_llama, prompts, NEW, masking=_random(tiny_llama, 0.5), batch_size=10)
    for _ in range(2):  # each use copies the caches: a second point starts from the same prefill
        assert torch.equal(greedy(tiny_llama, prompts, NEW, batch_size=10, prefilled=caches), dense)
        assert torch.equal(greedy(tiny_llama, prompts, NEW, masking=_random(tiny_llama, 0.5), batch_size=10,
                                  prefilled=caches), masked)
    assert all(c.get_seq_length() == prompts.dense_positions for c in caches.caches)
    with pytest.raises(ValueError, match="not the dense prefill"):
        greedy(tiny_llama, prompts, NEW, batch_size=8, prefilled=caches)


def test_a_saved_prefill_reloads_to_the_same_tokens(tiny_llama, prompts, dense, tmp_path):
    from apc.perplexity.generation import load_prefill, save_prefill, select_prompts

    caches = dense_prefill(tiny_llama, prompts, batch_size=10)
    path = tmp_path / "prefill.pt"
    save_prefill(caches, path, prompts)
    loaded = load_prefill(path, prompts, tiny_llama)
    assert (loaded.n, loaded.prompt_len, loaded.batch_size) == (prompts.n, prompts.prompt_len, 10)
    assert torch.equal(greedy(tiny_llama, prompts, NEW, batch_size=10, prefilled=loaded), dense)
    masked = greedy(tiny_llama, prompts, NEW, masking=_random(tiny_llama, 0.5), batch_size=10)
    assert torch.equal(greedy(tiny_llama, prompts, NEW, masking=_random(tiny_llama, 0.5), batch_size=10,
                              prefilled=loaded), masked)
    other = select_prompts(torch.randint(2, 128, (6, 64)), 24, 12, bos=False, seed=3)
    with pytest.raises(ValueError, match="other prompts"):
        load_prefill(path, other, tiny_llama)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="not a readable prefill file"):
        load_prefill(path, prompts, tiny_llama)
    with pytest.raises(FileNotFoundError, match="rerun generation_dense"):
        load_prefill(tmp_path / "none.pt", prompts, tiny_llama)


def test_a_prompt_built_mask_chosen_on_the_prefill_decodes_as_full_recompute(tiny_llama, prompts, dense):
    """GRIFFIN on the prefill route: the prefill of the prompt alone runs dense and keeps the mask each layer
    chooses; the one-position steps reuse it; the tokens are full recompute's (the same mask, every step)."""
    masks = _mode_masks("griffin", prompts.dense_positions)
    handles = []

    def masking():
        handles.append(install_interventions(tiny_llama, masks, skip_first_position=False))
        return handles[-1]

    cached = generation_point(tiny_llama, prompts, dense, masking, route="prefill")
    full = generation_point(tiny_llama, prompts, dense, lambda: install_interventions(
        tiny_llama, masks, skip_first_position=False), route="recompute")
    assert torch.equal(cached["tokens"], full["tokens"]) and cached["gen_agree"] < 1.0
    s = handles[0].stats()["down_in"]  # only the decode steps count: the prompt ran dense
    assert s["elements"] == prompts.n * NEW * WIDTH * N_LAYERS and s["kept_fraction"] < 1.0


def test_frontier_points_carry_their_generation_agreement(tiny_llama, windows, prompts, dense):
    from apc.perplexity.frontier import GenerationInputs, score_point

    gen = GenerationInputs(prompts, dense, dense_prefill(tiny_llama, prompts))
    zero = {"down_in": [0.0] * N_LAYERS}
    res = score_point(tiny_llama, windows, "random", 0.5, bos=True, projections=["down_in"], thresholds=zero,
                      generation=gen)
    g = res["generation"]
    assert set(COLUMNS) <= set(g) and g["gen_prompts"] == prompts.n and g["gen_new_tokens"] == NEW
    assert g["gen_agree_lo"] <= g["gen_agree"] <= g["gen_agree_hi"] and g["gen_agree"] < 1.0
    assert len(g["prefix"]) == len(g["agree"]) == prompts.n and np.asarray(g["tokens"]).shape == (prompts.n, NEW)
    same = score_point(tiny_llama, windows, "random", 1.0, bos=True, projections=["down_in"], thresholds=zero,
                       generation=gen)["generation"]
    assert same["gen_agree"] == 1.0 and same["gen_prefix"] == NEW
