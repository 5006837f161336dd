import re

import pytest
import yaml

from apc.lines.plan import resolve_config as resolve

from apc.common.errors import ConfigError
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


def _local_model(tmp_path, model_type):
    folder = tmp_path / model_type
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "%s"}' % model_type)
    return str(folder)


@pytest.mark.parametrize("model_type, over, message", [
    ("opt", {}, "config key 'extract.projections': gate, up not in this plain FFN (OPT, GPT-2, GPT-NeoX/Pythia, "
                "Falcon); its projections are fc1, down, down_in"),
    ("phi3", {"extract": {"projections": ["fc1"]}},
     "config key 'extract.projections': fc1 not in this fused FFN (Phi-3); its projections are gate, up, down, down_in"),
    ("olmoe", {}, "config key 'frontier.pset': the frontier's predictors read the whole FFN input"),
])
def test_projections_the_local_models_family_lacks_stop_at_config_time(tmp_path, model_type, over, message):
    with pytest.raises(ConfigError) as err:
        res(model={"name_or_path": _local_model(tmp_path, model_type)}, **over)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_non_gated_and_moe_configs_resolve(tmp_path):
    opt = res(model={"name_or_path": _local_model(tmp_path, "opt")},
              extract={"projections": ["fc1", "down_in"], "threshold": "zero"},
              cluster={"projections": ["fc1"], "cells": []}, perplexity={"psets": {"fc1": ["fc1"]}, "cells": "all"},
              frontier={"lines": {f: False for f in ("cats", "chess", "teal", "wina", "rsparse", "griffin")}})  # gated
    assert opt["extract"]["threshold"] == "zero"
    res(model={"name_or_path": _local_model(tmp_path, "mixtral")}, frontier={"pset": {}})
    with pytest.raises(ConfigError, match="config key 'extract.threshold'"):
        res(extract={"threshold": "exact"})
