"""Every registered line meets the same contract on the tiny model (tests/lines/contract.py)."""

import pytest

from apc.lines import all_lines
from lines.contract import check_line, needs_files

FAMILIES = [f for f, impl in all_lines().items() if impl.training_free]


@pytest.mark.parametrize("family", FAMILIES)
def test_line_contract(tiny_llama, family):
    if needs_files(family):
        pytest.skip(f"{family}'s points read workflow files (covered by the smoke DAG)")
    check_line(tiny_llama, family)


def test_every_builtin_is_registered_with_a_valid_declaration():
    lines = all_lines()
    assert {"threshold", "random", "cats", "teal", "wina", "larosa", "griffin", "oracle", "predicted", "neuron",
            "experts"} <= set(lines)
    for family, impl in lines.items():
        assert impl.decided_by in ("before", "gate", "down_in", "input")
        assert impl.scope in ("token", "sequence", "static")
        assert len(impl.style) == 3 and impl.mode

