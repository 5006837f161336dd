"""Rule jobs run the library of the checkout whose Snakefile started them."""

import pytest

from apc.rulekit import check_library_source
from conftest import ROOT


def test_job_refuses_a_library_from_another_checkout(monkeypatch, tmp_path):
    monkeypatch.setenv("APC_SRC", str(ROOT / "src"))
    assert check_library_source() == (ROOT / "src").resolve()
    monkeypatch.setenv("APC_SRC", str(tmp_path / "other-checkout" / "src"))
    with pytest.raises(RuntimeError, match="not from the workflow's checkout"):
        check_library_source()


def test_jobs_on_a_multi_gpu_machine_take_free_gpus_in_turn(tmp_path, monkeypatch):
    import torch

    from apc import rulekit

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(rulekit, "_CLAIMED", [])
    assert rulekit.claim_gpu(tmp_path) == 0
    assert rulekit.claim_gpu(tmp_path) == 1  # GPU 0's lock is held
    assert rulekit.claim_gpu(tmp_path) is None  # every slot held: share the current device
    assert chosen == [0, 1]
    rulekit._CLAIMED[0].release()  # the first job ended
    assert rulekit.claim_gpu(tmp_path) == 0
    for lock in rulekit._CLAIMED:
        lock.release()
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert rulekit.claim_gpu(tmp_path) is None  # one GPU: nothing to choose


def test_thread_count_reaches_torch_imported_after_start():
    """A job that imports torch only after ``start`` (or never) still runs with its rule's threads."""
    import subprocess
    import sys

    code = ("import sys, types\n"
            "from apc.rulekit import start\n"
            "sm = types.SimpleNamespace(log=[], threads=1, wildcards=types.SimpleNamespace(), "
            "params=types.SimpleNamespace())\n"
            "start(sm, 'probe')\n"
            "assert 'torch' not in sys.modules, 'start imported torch'\n"
            "import torch\n"
            "print(torch.get_num_threads())\n")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT / "src")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split()[-1] == "1"
