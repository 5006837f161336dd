"""The generated blocks of README.md and docs/*.md match what `make docs` renders from docs/results/."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md"))

pytest.importorskip("cogapp")


def _cog_check(root: Path, pages=PAGES) -> subprocess.CompletedProcess:
    """`cog --check` over pages of a checkout (or a copy), importing that checkout's docs/render.py."""
    return subprocess.run([sys.executable, "-m", "cogapp", "--check", "-I", str(root / "docs"),
                           *[str(root / p) for p in pages]], cwd=root, capture_output=True, text=True)


def test_every_generated_block_is_current():
    r = _cog_check(ROOT)
    assert r.returncode == 0, f"stale docs: run `make docs`\n{r.stdout}{r.stderr}"


def test_a_changed_raw_number_makes_the_check_fail(tmp_path):
    copy = tmp_path / "repo"
    (copy / "docs").mkdir(parents=True)
    shutil.copy(ROOT / "README.md", copy / "README.md")
    shutil.copy(ROOT / "config.yaml", copy / "config.yaml")
    for p in (ROOT / "docs").iterdir():
        (shutil.copytree if p.is_dir() else shutil.copy)(p, copy / "docs" / p.name)
    (copy / "src").symlink_to(ROOT / "src")
    page = ["docs/kernels.md"]
    assert _cog_check(copy, page).returncode == 0
    raw = copy / "docs/results/kernels-h200/gpu_mask_overhead_fused.txt"
    text = raw.read_text()
    assert "ratio 1.11" in text
    raw.write_text(text.replace("ratio 1.11", "ratio 1.19", 1))
    r = _cog_check(copy, page)
    assert r.returncode != 0
    assert "kernels.md" in r.stdout + r.stderr
