"""The code that uses a line never names one: an AST scan of the string constants of the modules that read the
registry.  The scan covers the masking machinery, the point scoring and the FLOPs accounting; the workflow's
planning (apc.common.frontier, apc.common.maskspec, config_checks), the rule scripts, the results and
docs/render.py still name lines and are not scanned yet."""

import ast
from pathlib import Path

import pytest

from apc.lines import all_lines

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ["src/apc/perplexity/masking.py", "src/apc/perplexity/mode_rules.py", "src/apc/perplexity/frontier.py",
           "src/apc/perplexity/accounting.py", "src/apc/perplexity/maskargs.py", "src/apc/perplexity/calibrate.py"]
#: names a line shares with another namespace: ``random`` is also a perplexity mode (p & r) and a clustering
#: method, ``threshold`` a word of messages
SHARED = {"random"}


def line_names() -> set[str]:
    names = set()
    for family, impl in all_lines().items():
        names.add(family)
        names.add(impl.mode)
        if impl.training_free:
            names.update(impl.line_names(impl.config, {}))
    return names - SHARED - {"centroid_only", "predicted", "neuron_predicted", "random_only"}


def strings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


@pytest.mark.parametrize("rel", SCANNED)
def test_no_line_name_in_code_that_reads_the_registry(rel):
    names = line_names()
    hits = [(line, s) for line, s in strings(ROOT / rel) if s in names]
    assert not hits, f"{rel} names lines {hits}: ask the registry (apc.lines) instead"


def test_the_scan_finds_a_line_name_but_not_a_docstring(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text('"""Mentions teal in prose."""\nx = {"teal": 1}\n')
    assert [s for _, s in strings(path) if s in line_names()] == ["teal"]
