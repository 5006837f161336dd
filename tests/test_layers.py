"""The package's import layers (pyproject.toml, [tool.importlinter]) hold, and checking a config loads no torch."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(config), "--no-cache"], cwd=ROOT, capture_output=True,
                          text=True, env={"PYTHONPATH": str(ROOT / "src"), "PATH": str(LINT.parent)})


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")
def test_import_contracts_hold():
    res = _lint(ROOT / "pyproject.toml")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "0 broken" in res.stdout


@pytest.mark.skipif(not LINT.exists(), reason="import-linter is not installed (pip install -e '.[dev]')")
def test_import_contracts_catch_an_upward_import_and_a_cycle(tmp_path):
    """A copy of the package with ``apc.common`` importing ``apc.clustering``, and ``apc.common.sweep``
    importing ``apc.common.config`` inside a function (a cycle), breaks the layers and the cycle contracts."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "src" / "apc", src / "apc", ignore=shutil.ignore_patterns("__pycache__"))
    with open(src / "apc" / "common" / "layout.py", "a") as f:
        f.write("\n\ndef _up():\n    from apc.clustering import cluster  # noqa: F401\n")
    with open(src / "apc" / "common" / "sweep.py", "a") as f:
        f.write("\n\ndef _back():\n    from apc.common.config import resolve  # noqa: F401\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    res = subprocess.run([str(LINT), "--config", str(tmp_path / "pyproject.toml"), "--no-cache"], cwd=tmp_path,
                         capture_output=True, text=True, env={"PYTHONPATH": str(src), "PATH": str(LINT.parent)})
    assert res.returncode != 0
    assert "apc.common.layout -> apc.clustering" in res.stdout
    assert ".sweep -> .config" in res.stdout
    assert "apc.common.config is not allowed to import torch" in res.stdout


def test_config_check_imports_no_torch():
    """Resolving and checking the default and smoke configs in a fresh process leaves torch unimported."""
    code = (
        "import sys, yaml\n"
        "from apc.common.config import resolve\n"
        "from apc.common.storage import storage_plan\n"
        "from apc.common.sweep import cluster_cells, perplexity_batches\n"
        "raw = yaml.safe_load(open('config.yaml'))\n"
        "for preset in ('default', 'smoke'):\n"
        "    cfg = resolve({**raw, 'preset': preset})\n"
        "    cluster_cells(cfg), perplexity_batches(cfg), storage_plan(cfg)\n"
        "print(sorted(m for m in ('torch', 'apc.clustering', 'apc.extraction', 'transformers') if m in sys.modules))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT / "src"), "PATH": ""})
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().replace("'", '"')) == []


def test_method_names_match_the_registry():
    """The torch-free method table lists every built-in clustering method with its fixed K."""
    from apc.clustering import registry
    from apc.common import methods

    registry._load_builtins()
    assert set(methods.BUILTIN) <= set(registry._METHODS)
    builtin_modules = {f"apc.clustering.{m}" for m in registry._BUILTINS}
    assert {n for n, fn in registry._METHODS.items() if fn.__module__ in builtin_modules} == set(methods.BUILTIN)
    assert methods.fixed_k("static") == 1 and methods.fixed_k("apc") is None
    with pytest.raises(ValueError, match="unknown clustering method"):
        methods.fixed_k("nope")
