"""A line from another installed package joins the registry through the ``apc.lines`` entry-point group."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "apc_line_plugin"
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
    target, source = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src") / FIXTURE.name
    shutil.copytree(FIXTURE, source)  # the build writes next to its sources: never into the checkout
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, capture_output=True)
    return target


def test_an_installed_plugin_line_is_registered_and_meets_the_contract(installed):
    env = {**os.environ, "PYTHONPATH": f"{installed}:{ROOT / 'src'}"}
    out = subprocess.run([sys.executable, "-c", CHECK.format(tests=str(ROOT / "tests"))], env=env,
                         capture_output=True, text=True, cwd=ROOT / "tests")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "plugin line ok" in out.stdout


def test_without_the_plugin_the_line_is_unknown():
    from apc.lines import parse

    with pytest.raises(ValueError, match="not a frontier line: 'topk'"):
        parse("topk")
