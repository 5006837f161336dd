"""Rule jobs run the library of the checkout whose Snakefile started them."""

import pytest

from apc.common.rulekit import check_library_source
from conftest import ROOT


def test_job_refuses_a_library_from_another_checkout(monkeypatch, tmp_path):
    monkeypatch.setenv("APC_SRC", str(ROOT / "src"))
    assert check_library_source() == (ROOT / "src").resolve()
    monkeypatch.setenv("APC_SRC", str(tmp_path / "other-checkout" / "src"))
    with pytest.raises(RuntimeError, match="not from the workflow's checkout"):
        check_library_source()
