import re

import pytest
import yaml

from apc.common.config import ConfigError, resolve
from conftest import ROOT

RAW = yaml.safe_load((ROOT / "config.yaml").read_text())


def res(**over):
    return resolve({**RAW, **over}, root=ROOT)


def test_presets_resolve():
    assert res()["outdir"] == "results/default"
    smoke = res(preset="smoke")
    assert smoke["data"]["seq_len"] == 128 and smoke["extract"]["sparsity"] == 0.5  # inherited
    assert set(smoke["perplexity"]["psets"]) == {"gate"}  # psets replaced, not merged
    mistral = res(preset="mistral7b-wikitext2")
    assert mistral["model"]["name_or_path"] == "mistralai/Mistral-7B-v0.1"
    assert mistral["data"]["hf_name"] == "wikitext-2-raw-v1" and mistral["data"]["seq_len"] == 2048


def test_overrides_from_the_command_line_are_coerced():
    c = res(preset="smoke", cluster={"k": ["4", "16"], "max_iter": "3"}, data={"test_tokens": "null"})
    assert c["cluster"]["k"] == [4, 16] and c["cluster"]["max_iter"] == 3 and c["data"]["test_tokens"] is None
    assert res(**{"extract.sparsity": "0.3"})["extract"]["sparsity"] == 0.3
    cells = res(perplexity={"cells": [{"method": "apc", "k": "32", "scope": "pooled", "seed": "0"}]})
    assert cells["perplexity"]["cells"] == [{"method": "apc", "k": 32, "scope": "pooled", "seed": 0}]


@pytest.mark.parametrize("over, key", [
    ({"bogus": 1}, "'bogus': unknown key"),
    ({"cluster": {"kk": [1]}}, "'cluster.kk': unknown key"),
    ({"threads": "many"}, "'threads'"),
    ({"extract": {"sparsity": 1.5}}, "'extract.sparsity'"),
    ({"extract": {"sparsity": 0}}, "'extract.sparsity'"),
    ({"data": {"train_tokens": 0}}, "'data.train_tokens'"),
    ({"data": {"test_tokens": 10}}, "'data.test_tokens'"),
    ({"model": {"name_or_path": "./no/such/model"}}, "'model.name_or_path'"),
    ({"model": {"name_or_path": "/abs/missing"}}, "'model.name_or_path'"),
    ({"cluster": {"density": 1.2}}, "'cluster.density'"),
    ({"preset": "nope"}, "'preset'"),
    ({"cluster": {"methods": ["apc", "kmedoids"]}}, "'cluster.methods': unknown method 'kmedoids'"),
    ({"data": {"source": "text", "text_files": ["missing.txt"]}}, "'data.text_files'"),
])
def test_bad_config_names_the_key(over, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        res(**over)
