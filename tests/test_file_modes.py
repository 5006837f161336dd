import os
import stat

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from apc.common.atomic import atomic_path, current_umask, write_json, write_npy
from apc.extraction.model import ensure_converted
from apc.extraction.patterns import PatternWriter


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_writes_follow_the_umask(tmp_path, umask_022):
    write_json(tmp_path / "a.json", {"x": 1})
    write_npy(tmp_path / "b.npy", np.arange(3))
    with atomic_path(tmp_path / "sub" / "c.csv", ".csv") as tmp:
        assert _mode(tmp) == 0o644  # the temporary already has the final mode
        tmp.write_text("x\n1\n")
    for name in ("a.json", "b.npy", "sub/c.csv"):
        assert _mode(tmp_path / name) == 0o644, name
    assert _mode(tmp_path / "sub") == 0o755
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.json", "b.npy", "c.csv", "sub"]  # no temporaries left


def test_atomic_writes_follow_a_stricter_umask(tmp_path):
    old = os.umask(0o077)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.json") == 0o600


def test_pattern_files_follow_the_umask(tmp_path, umask_022):
    w = PatternWriter(tmp_path / "train" / "gate" / "L00.npy", n_tokens=4, width=10, meta={"layer": 0})
    w.append(np.ones((4, 10), dtype=bool))
    w.close()
    for name in ("L00.npy", "L00.json"):
        assert _mode(tmp_path / "train" / "gate" / name) == 0o644, name


def test_converted_model_folder_follows_the_umask(tmp_path, umask_022):
    def convert(tmp):
        (tmp / "config.json").write_text("{}")
        (tmp / "tokenizer").mkdir(mode=0o700)
        (tmp / "tokenizer" / "vocab.json").write_text("{}")
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # written with mode 0600
        os.chmod(tmp, 0o700)

    out = ensure_converted(tmp_path / "models" / "m-123", convert)
    assert _mode(out) == 0o755 and _mode(out / "tokenizer") == 0o755
    for name in ("config.json", "model.safetensors", "tokenizer/vocab.json"):
        assert _mode(out / name) == 0o644, name
    assert current_umask() == 0o022  # reading the umask leaves it as it was
