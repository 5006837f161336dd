import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

# Torch's OpenMP threads sleep instead of spinning while they wait: the Snakemake runs of the session share
# the cores with this process (and with each other), and spinning threads that wait for a descheduled one
# make a pass many times slower (4 s against 26 s for the same matrix products here); results are unchanged.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

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


PLUGIN = ROOT / "tests" / "fixtures" / "apc_line_plugin"
#: the folders :func:`install_plugin` installed into this session: every later :class:`DagRun` has them on its path
PLUGIN_SITES: list = []


def install_plugin(workdir: Path) -> Path:
    """pip-install the fixture package of an out-of-tree line (``tests/fixtures/apc_line_plugin``, line ``topk``)
    into ``workdir/site`` from a copy of its sources (its build writes beside them: never into the checkout);
    returns the folder to put on ``PYTHONPATH``."""
    target, source = workdir / "site", workdir / "src" / PLUGIN.name
    shutil.copytree(PLUGIN, source)
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(source)], check=True, capture_output=True)
    PLUGIN_SITES.append(target)
    sys.path.insert(0, str(target))  # this process reads the runs' results: its registry has the line too
    from apc.lines.registry import load_plugins

    load_plugins()
    return target


class DagRun:
    """``python -m snakemake --cores 2 *args`` in the repository root, started in the background at creation
    (the session's installed plugins, :data:`PLUGIN_SITES`, put before the environment's ``PYTHONPATH``);
    :meth:`result` waits for it; the session's end stops any still running."""

    started: list = []

    def __init__(self, *args):
        self._out, self._err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        env = os.environ.copy()
        if PLUGIN_SITES:
            env["PYTHONPATH"] = os.pathsep.join([*map(str, PLUGIN_SITES), *filter(None, [env.get("PYTHONPATH")])])
        self.proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", *args], cwd=ROOT,
                                     stdout=self._out, stderr=self._err, text=True, env=env)
        self._res = None
        DagRun.started.append(self)

    def result(self, check=True) -> subprocess.CompletedProcess:
        """The finished run (``returncode``, ``stdout``, ``stderr``); an ``AssertionError`` with the output's tail
        when it failed and ``check``."""
        if self._res is None:
            rc = self.proc.wait()
            out = []
            for f in (self._out, self._err):
                f.seek(0)
                out.append(f.read())
                f.close()
            self._res = subprocess.CompletedProcess(self.proc.args, rc, *out)
        res = self._res
        if check and res.returncode != 0:
            raise AssertionError(f"snakemake failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-6000:]}")
        return res

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class After:
    """``prepare()`` then ``fn()``, run in a background thread once ``first`` (a :class:`DagRun`) has finished
    well; :attr:`prepared` is set once ``prepare`` is done (or will not run); :meth:`result` waits for ``fn``
    and returns what it returned (``first``'s failure, else the exception of ``prepare`` or ``fn``, is raised)."""

    def __init__(self, first: DagRun, prepare, fn):
        self.first, self.value, self.error = first, None, None
        self.prepared = threading.Event()
        self._thread = threading.Thread(target=self._go, args=(prepare, fn), daemon=True)
        self._thread.start()

    def _go(self, prepare, fn):
        try:
            if self.first.proc.wait() == 0:
                prepare()
                self.prepared.set()
                self.value = fn()
        except BaseException as e:  # raised again in the test that waits for it
            self.error = e
        finally:
            self.prepared.set()

    def result(self):
        self._thread.join()
        self.first.result()
        if self.error is not None:
            raise self.error
        return self.value


def copy_results(src: Path, dst: Path, outdir: str) -> Path:
    """Copy ``src`` (the folder of the outdir ``src/outdir`` and of its MLflow store) to ``dst`` with the files'
    times, so that Snakemake finds the copy as up to date as the original, less the resolved config, which names
    the original outdir (the copy's run writes its own)."""
    shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
    (dst / outdir / "config.json").unlink()
    return dst


def snakemake(*args, check=True):
    """Run this checkout's workflow (``python -m snakemake --cores 2 *args`` in the repository root);
    an ``AssertionError`` with the output's tail when it fails and ``check``."""
    return DagRun(*args).result(check)


# Long Snakemake runs that session fixtures read start when the session starts, in the background, so that
# they use the core the other tests leave idle and run side by side with each other:
# ``@start_early("fixture")`` registers ``start(tmp_path_factory, items)`` (``items``: the selected tests that
# use ``fixture``), and the fixture gets what it returned from ``started("fixture", tmp_path_factory)``,
# which starts it then if no selected test used the fixture at the session's start.
# ``critical=True``: the run that ends last when it shares the cores (the smoke DAG) starts first and keeps
# the normal scheduling priority; this process, and so every later run and test, lowers its own (os.nice), so
# that the other runs and tests use the cores it leaves idle instead of slowing it down.
_EARLY: dict = {}
_CRITICAL: set = set()
_STARTED: dict = {}
NICE = 5


def start_early(fixture, critical=False):
    def register(start):
        _EARLY[fixture] = start
        if critical:
            _CRITICAL.add(fixture)
        return start
    return register


def started_if_any(fixture):
    """What ``fixture``'s start returned if it was started, else None."""
    return _STARTED.get(fixture)


def started(fixture, tmp_path_factory, items=()):
    if fixture not in _STARTED:
        _STARTED[fixture] = _EARLY[fixture](tmp_path_factory, list(items))
    return _STARTED[fixture]


@pytest.fixture(scope="session", autouse=True)
def _early_runs(request, tmp_path_factory):
    for critical in (True, False):  # the critical runs first
        for fixture in [f for f in _EARLY if (f in _CRITICAL) == critical]:
            items = [item for item in request.session.items
                     if fixture in getattr(item, "fixturenames", ()) and not item.get_closest_marker("skip")]
            if items:
                started(fixture, tmp_path_factory, items)
        if critical and _CRITICAL & set(_STARTED):
            os.nice(NICE)
    yield
    for run in DagRun.started:
        run.stop()


@pytest.fixture
def tiny_llama():
    """A tiny random Llama-style causal LM (3 layers, FFN width 44)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=44, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2)
    return LlamaForCausalLM(cfg).eval()
