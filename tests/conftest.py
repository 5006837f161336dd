import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def pytest_addoption(parser):
    parser.addoption("--all-families", action="store_true",
                     help="also run the FFN families beyond one per kind through the workflow (GPT-2, GPT-NeoX, "
                          "Falcon, Mixtral: about a minute each); APC_ALL_FAMILIES=1 does the same")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--all-families") or os.environ.get("APC_ALL_FAMILIES") == "1":
        return
    skip = pytest.mark.skip(reason="one family of each kind runs by default; --all-families runs every family")
    for item in items:
        if "all_families" in item.keywords:
            item.add_marker(skip)


def snakemake(*args, check=True):
    """Run this checkout's workflow (``python -m snakemake --cores 2 *args`` in the repository root);
    an ``AssertionError`` with the output's tail when it fails and ``check``."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise AssertionError(f"snakemake failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
    return res


@pytest.fixture
def tiny_llama():
    """A tiny random Llama-style causal LM (3 layers, FFN width 44)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=44, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).eval()
