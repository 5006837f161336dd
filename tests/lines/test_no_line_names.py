"""The code that uses a line never names one: an AST scan of the string constants of every module of ``src/``
outside ``src/apc/lines/``, of ``workflow/`` and of ``docs/render.py`` (the pages' cog blocks name the lines they
render, not the renderer).  A docstring or a comment may mention a line; code that branches on one may not."""

import ast
from pathlib import Path

import pytest

from apc.lines import all_lines

ROOT = Path(__file__).resolve().parents[2]
SCANNED = sorted(p.relative_to(ROOT).as_posix() for p in [
    *(p for p in (ROOT / "src").rglob("*.py") if "apc/lines/" not in p.as_posix()),
    *(ROOT / "workflow").rglob("*.py"), *(ROOT / "workflow").rglob("*.smk"), ROOT / "Snakefile", ROOT / "docs" / "render.py"])
#: family names that are also words of another namespace, where the scan would flag what is no line: ``random``
#: and ``threshold`` are perplexity modes and ``threshold`` a key of thresholds.json, ``random`` and ``static``
#: clustering methods, ``experts`` the mixture-of-experts FFN family and a config section, ``oracle`` a router
#: and an id assignment, ``neuron`` a predictor kind.  Their line strings that are not plain words
#: (``threshold-self``, ``teal-block``, ...) are scanned.
SHARED = {"random", "threshold", "experts", "oracle", "neuron"}


def line_names() -> set[str]:
    """Every built-in family, its mode, and the line strings of the training-free ones at their defaults."""
    names = set()
    for family, impl in all_lines().items():
        if not type(impl).__module__.startswith("apc.lines."):
            continue  # a plugin's line (the test session installs one): its name is no word of this project
        names.add(family)
        names.add(impl.mode)
        if impl.training_free:
            names.update(impl.line_names(impl.config, {}))
            names.update(impl.line_names({**impl.config, **_every_choice(impl)}, {}))
    return names - SHARED - {"centroid_only", "predicted", "neuron_predicted", "random_only"}


def _every_choice(impl) -> dict:
    """Settings that turn on every enumerated choice of a line (e.g. all of TEAL's allocations)."""
    out = {}
    for key, schema in impl.config_schema.items():
        enum = (schema.get("items") or {}).get("enum")
        if schema.get("type") == "array" and enum:
            out[key] = list(enum)
    return out


def strings(path: Path) -> list[tuple[int, str]]:
    """``(line number, value)`` of every string constant of a Python file (or a Snakemake file, read as Python
    after its directives are dropped) that is not a docstring."""
    text = path.read_text()
    if path.suffix == ".smk" or path.name == "Snakefile":
        return [(i + 1, s) for i, line in enumerate(text.splitlines())
                for s in _quoted(line.split("#", 1)[0])]
    tree = ast.parse(text)
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [(n.lineno, n.value) for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def _quoted(code: str) -> list[str]:
    import re

    return [m.group(2) for m in re.finditer(r"""(["'])((?:(?!\1).)*)\1""", code)]


@pytest.mark.parametrize("rel", SCANNED)
def test_no_line_name_outside_the_lines(rel):
    names = line_names()
    hits = [(line, s) for line, s in strings(ROOT / rel) if s in names]
    assert not hits, f"{rel} names lines {hits}: ask the registry (apc.lines) instead"


def test_the_scan_finds_a_line_name_but_not_a_docstring(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text('"""Mentions teal in prose."""\nx = {"teal": 1, "teal-block": 2}\n')
    assert [s for _, s in strings(path) if s in line_names()] == ["teal", "teal-block"]
    smk = tmp_path / "probe.smk"
    smk.write_text('rule a:\n    params:\n        x="cats",  # "wina" in a comment\n')
    assert [s for _, s in strings(smk) if s in line_names()] == ["cats"]
