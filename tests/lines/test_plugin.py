"""A line from another installed package joins the registry through the ``apc.lines`` entry-point group, meets the
contract, and reaches a smoke run's frontier (tests/test_workflow.py puts it there and checks it)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PLUGIN_SITES, install_plugin

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import sys
sys.path.insert(0, {tests!r})
from apc.lines import all_lines, parse
from lines.contract import check_line
import torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
model = LlamaForCausalLM(LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=44, num_hidden_layers=3,
                                     num_attention_heads=4, num_key_value_heads=2)).eval()
assert "topk" in all_lines(), list(all_lines())
assert parse("topk").impl.decided_by == "down_in"
check_line(model, "topk")
print("plugin line ok")
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    return PLUGIN_SITES[0] if PLUGIN_SITES else install_plugin(tmp_path_factory.mktemp("plugin"))


def _run(code: str, pythonpath) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT / "tests")


def test_an_installed_plugin_line_is_registered_and_meets_the_contract(installed):
    out = _run(CHECK.format(tests=str(ROOT / "tests")), [installed, ROOT / "src"])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "plugin line ok" in out.stdout


def test_without_the_plugin_the_line_is_unknown():
    code = ("from apc.lines import parse\ntry:\n    parse('topk')\nexcept ValueError as e:\n    print(e)\n")
    out = _run(code, [ROOT / "src"])
    assert out.returncode == 0 and "not a frontier line: 'topk'" in out.stdout, out.stderr[-2000:]
