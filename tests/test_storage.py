"""Sampled token-row stores (nested seeded samples, joined row by row) and the storage plan."""

import numpy as np
import pytest
import torch
import yaml

from apc.clustering.sources import sample_layer, weighted_layer
from apc.common.config import resolve
from apc.common.errors import ConfigError
from apc.common.rowstore import sample_rows
from apc.common.storage import GB, storage_plan
from apc.extraction.extract import calibrate_thresholds, extract_patterns
from apc.extraction.ffn_inputs import FfnInputReader, extract_ffn_inputs, ffn_input_path
from apc.extraction.magnitudes import MagnitudeReader, magnitude_path
from apc.extraction.patterns import PatternReader, pattern_path
from apc.prediction.cell import layer_data
from conftest import ROOT


def _windows(n=3, seq_len=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 128, (n, seq_len), generator=g)


def test_samples_are_sorted_seeded_and_nested():
    small, large = sample_rows(1000, 100, 3), sample_rows(1000, 400, 3)
    assert small.shape == (100,) and (np.diff(small) > 0).all() and small.max() < 1000
    assert set(small) <= set(large)
    assert np.array_equal(small, sample_rows(1000, 100, 3)) and not np.array_equal(small, sample_rows(1000, 100, 4))
    assert sample_rows(1000, None, 0) is None and sample_rows(1000, 1000, 0) is None


def test_sampled_stores_hold_the_full_stores_rows_and_join(tiny_llama, tmp_path):
    windows = _windows()
    n = 3 * 11
    thr = calibrate_thresholds(tiny_llama, windows, ["gate", "down_in"], 0.5, skip_first=True)
    full, part = tmp_path / "full", tmp_path / "part"
    extract_patterns(tiny_llama, windows, thr, ["gate", "down_in"], full, "train", {}, skip_first=True,
                     magnitudes=["down_in"])
    s = extract_patterns(tiny_llama, windows, thr, ["gate", "down_in"], part, "train", {}, skip_first=True,
                         magnitudes=["down_in"], pattern_tokens=20, magnitude_tokens=9, sample_seed=5)
    assert s["n_tokens"] == 20 and s["n_split_tokens"] == n and s["magnitude_tokens"] == 9
    rows, mrows = sample_rows(n, 20, 5), sample_rows(n, 9, 5)
    for layer in range(3):
        a, b = PatternReader(pattern_path(full, "train", "gate", layer)), PatternReader(pattern_path(part, "train", "gate", layer))
        assert b.n_tokens == 20 and np.array_equal(b.token_rows, rows) and np.array_equal(b.packed(), a.packed(rows))
        assert b.n_split_tokens() == n and b.meta["sample"] == {"seed": 5, "n_split_tokens": n}
        ma = MagnitudeReader(magnitude_path(full, "train", "down_in", layer))
        mb = MagnitudeReader(magnitude_path(part, "train", "down_in", layer))
        assert np.array_equal(mb.codes, ma.codes[mrows])
        # the weighted reader joins the magnitude sample to its pattern rows
        w = weighted_layer(pattern_path(part, "train", "down_in", layer), None, 0)
        want = PatternReader(pattern_path(full, "train", "down_in", layer)).packed(mrows)
        assert w.n == 9 and np.array_equal(w.packed_rows(np.arange(9)).numpy(), want)
        assert sample_layer(pattern_path(part, "train", "gate", layer), 7, 1).n == 7
    # unsampled stores write no positions file and keep their old sidecars
    assert not (full / "train" / "gate" / "rows.npy").exists()
    assert "sample" not in PatternReader(pattern_path(full, "train", "gate", 0)).meta

    extract_ffn_inputs(tiny_llama, windows, tmp_path / "ffn", "train", {}, skip_first=True, max_tokens=9,
                       sample_seed=5)
    x, pats = layer_data(tmp_path / "ffn", part, "train", "gate", 1)
    assert x.shape[0] == pats.n == 9
    assert np.array_equal(pats.packed_rows(np.arange(9)).numpy(),
                          PatternReader(pattern_path(full, "train", "gate", 1)).packed(mrows))
    assert np.array_equal(FfnInputReader(ffn_input_path(tmp_path / "ffn", "train", 1)).token_rows, mrows)
    # inputs sampled with another seed hold tokens the patterns lack: one clear error
    extract_ffn_inputs(tiny_llama, windows, tmp_path / "ffn2", "train", {}, skip_first=True, max_tokens=9,
                       sample_seed=6)
    with pytest.raises(ValueError, match="holds tokens that .* does not"):
        layer_data(tmp_path / "ffn2", part, "train", "gate", 1)


def _config(preset, tmp_path, **over):
    raw = yaml.safe_load((ROOT / "config.yaml").read_text())
    return resolve({**raw, "preset": preset, "outdir": str(tmp_path / preset), **over}, root=ROOT)


def test_plan_formulas_and_the_line_that_stops_a_run(tmp_path):
    c = _config("smoke", tmp_path, store={"patterns": {"train": 300}, "magnitudes": {"train": 100},
                                          "ffn_inputs": {"train": 100}})
    plan = {s.name: s for s in storage_plan(c, root=ROOT).stores}
    shape = c["model"]["shape"]
    assert plan["patterns/train/gate"].bytes == 300 * shape["n_layers"] * ((shape["d_ff"] + 7) // 8)
    assert plan["patterns/train/gate"].key == "store.patterns.train"
    assert plan["patterns/test/down"].bytes == 2 * 127 * shape["n_layers"] * ((shape["d_model"] + 7) // 8)
    assert plan["patterns/test/down"].key == "data.test_tokens"
    assert plan["magnitudes/train/down_in"].bytes == 100 * shape["n_layers"] * shape["d_ff"]
    assert plan["ffn_inputs/test"].bytes == 2 * 127 * shape["n_layers"] * shape["d_model"] * 2
    p = storage_plan(c, root=ROOT)
    # nothing of this output folder exists yet (the model cache may hold the converted model)
    assert "total" in p.table(10**12) and p.total - plan["model (float32 conversion)"].bytes <= p.still_needed() <= p.total
    with pytest.raises(OSError, match=r"largest store, .* is sized by config key '[a-z_.]+'"):
        p.check_fits(p.still_needed() - 1)
    p.check_fits(p.still_needed())


def test_mistral_preset_plan_fits_150_gb(tmp_path):
    plan = storage_plan(_config("mistral7b-wikitext2", tmp_path), root=ROOT)
    assert plan.total <= 150 * GB
    assert {s.key for s in plan.stores if s.name.startswith(("patterns", "magnitudes", "ffn_inputs"))} <= \
        {f"store.{k}.{s}" for k in ("patterns", "magnitudes", "ffn_inputs") for s in ("train", "test")}


def test_the_dense_reference_is_planned_from_the_scored_tokens_and_the_vocabulary(tmp_path):
    # exact: every scored test token keeps its log-probabilities over the vocabulary (float32) and its top-1 (int64)
    c = _config("smoke", tmp_path, model={"shape": {"n_layers": 2, "d_model": 8, "d_ff": 16, "vocab": 1000}})
    seq = c["data"]["seq_len"]
    budget = max(c["perplexity"]["test_tokens"], c["frontier"]["test_tokens"])
    rows = min(c["data"]["test_tokens"] // seq, budget // seq) * (seq - 1)
    ref = {s.name: s for s in storage_plan(c, root=ROOT).stores}["ppl/dense-reference"]
    assert ref.bytes == rows * (1000 * 4 + 8) and ref.paths[0].endswith("ppl/dense-reference.npz")
    # the loaded model's config.json outranks model.shape.vocab
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"vocab_size": 50}')
    ref = {s.name: s for s in storage_plan(c, manifest={"load_path": str(model)}, root=ROOT).stores}["ppl/dense-reference"]
    assert ref.bytes == rows * (50 * 4 + 8)
    # top-k: k log-probabilities + the rest's bucket (float32), k ids (int32), the top-1 (int64), per token
    c = _config("smoke", tmp_path, perplexity={**c["perplexity"], "kl_reference": "topk", "kl_top_k": 16})
    ref = {s.name: s for s in storage_plan(c, root=ROOT).stores}["ppl/dense-reference"]
    assert ref.bytes == rows * (17 * 4 + 16 * 4 + 8)
    # the Mistral preset scores its whole test split against a top-64 reference
    mc = _config("mistral7b-wikitext2", tmp_path)
    m = {s.name: s for s in storage_plan(mc, root=ROOT).stores}
    mseq = mc["data"]["seq_len"]
    windows = m["tokens/test"].bytes // (mseq * 8)
    assert m["ppl/dense-reference"].bytes == windows * (mseq - 1) * (65 * 4 + 64 * 4 + 8)


def test_sample_larger_than_the_patterns_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="config key 'store.magnitudes.test'"):
        _config("smoke", tmp_path, store={"patterns": {"test": 100}, "magnitudes": {"test": 200}})
    with pytest.raises(ConfigError, match="config key 'store.ffn_inputs.train'"):
        _config("smoke", tmp_path, store={"patterns": {"train": 100}, "magnitudes": {"train": 50}})
    # without the frontier no FFN inputs are stored, and their key is not checked
    _config("smoke", tmp_path, store={"patterns": {"train": 100}, "magnitudes": {"train": 50}}, frontier={"pset": {}})
