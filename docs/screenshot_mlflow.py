"""Screenshots of a run's MLflow experiment in headless Chromium: the runs table and a compare view.

    .venv/bin/python docs/screenshot_mlflow.py [--store results/mlflow.db] [--experiment apc] [--out docs/img]

Starts ``mlflow server`` on a copy of the sqlite store (the store itself is never written), opens the
experiment's runs table in the model-training view (:func:`apc.results.tracking.runs_page`) with the study
run's key columns shown, and the compare view of the study's frontier runs (scrolled to their names,
parameters and first metrics), in Debian's headless Chromium
driven through ``chromedriver``'s W3C WebDriver HTTP interface (plain ``urllib``, no client library); a fresh
browser profile each time.  Writes ``mlflow-runs.png`` and ``mlflow-compare.png`` to ``--out``, and
``mlflow-first-open.png``: what a fresh browser shows on the experiment's own address (``#/experiments/<id>``),
the view the UI picks by itself.  Needs ``apt-get install chromium chromium-driver``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from apc.common.atomic import atomic_path  # noqa: E402
from apc.results.tracking import UI_VIEW_QUERY, runs_page  # noqa: E402

CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
               "--hide-scrollbars", "--window-size=2000,1500", "--force-device-scale-factor=1"]
#: study-run columns shown in the runs table (those that exist), before the headline columns
STUDY_COLUMNS = ("ppl_dense", "frontier_lines")
#: the compare page: scroll it (its <main>) to the runs' names, the top of its run details
SCROLL_TO_RUNS = """
var main = document.querySelector('main');
var rid = [...document.querySelectorAll('*')].find(e => e.childElementCount === 0 && e.textContent.trim() === 'Run ID:');
if (main && rid) main.scrollTop += rid.getBoundingClientRect().top - 40;
"""
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _http(method: str, url: str, body: dict | None = None, timeout: float = 60.0) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read() or b"{}")


def _wait_http(url: str, what: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with status {proc.returncode} before answering {url}")
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=5).read()
            return
        time.sleep(0.5)
    raise SystemExit(f"{what} did not answer {url} within {timeout:.0f}s")


@contextlib.contextmanager
def _process(cmd: list[str], log: Path, env: dict | None = None) -> Iterator[subprocess.Popen]:
    """``cmd`` running in ``log``'s folder (whatever it writes stays there), ended on exit."""
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=log.parent,
                                start_new_session=True)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Browser:
    """One headless Chromium session through chromedriver's WebDriver endpoint at ``url``."""

    def __init__(self, url: str, profile: Path, chromium: str):
        self.url = url
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": chromium, "args": CHROME_ARGS + [f"--user-data-dir={profile}"]}}}}
        self.session = _http("POST", f"{url}/session", caps)["value"]["sessionId"]

    def _cmd(self, method: str, path: str, body: dict | None = None):
        return _http(method, f"{self.url}/session/{self.session}{path}", body)["value"]

    def open(self, address: str) -> None:
        self._cmd("POST", "/url", {"url": address})

    def js(self, script: str, *args):
        return self._cmd("POST", "/execute/sync", {"script": script, "args": list(args)})

    def wait_text(self, texts: list[str], timeout: float = 90.0) -> str:
        """Wait until the page shows one of ``texts``; return it."""
        t0 = time.time()
        while time.time() - t0 < timeout:
            body = self.js("return document.body ? document.body.innerText : '';") or ""
            for t in texts:
                if t in body:
                    return t
            time.sleep(0.5)
        raise SystemExit(f"the page never showed any of {texts}; it shows: {body[:500]!r}")

    def screenshot(self, path: Path) -> None:
        png = base64.b64decode(self._cmd("GET", "/screenshot"))
        with atomic_path(path, ".png") as tmp:
            Path(tmp).write_bytes(png)
        print(f"wrote {path} ({len(png)} bytes)")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            _http("DELETE", f"{self.url}/session/{self.session}")


@contextlib.contextmanager
def _browser(chromium: str, chromedriver: str, tmp: Path) -> Iterator[Browser]:
    port = _free_port()
    with _process([chromedriver, f"--port={port}"], tmp / "chromedriver.log") as proc:
        _wait_http(f"http://127.0.0.1:{port}/status", "chromedriver", proc)
        profile = Path(tempfile.mkdtemp(prefix="profile-", dir=tmp))
        b = Browser(f"http://127.0.0.1:{port}", profile, chromium)
        try:
            yield b
        finally:
            b.close()


def _study(server: str, experiment: str) -> tuple[str, dict, list[dict]]:
    """(experiment id, the newest study run, its frontier runs) from the tracking server's REST API."""
    q = urllib.parse.urlencode({"experiment_name": experiment})
    exp = _http("GET", f"{server}/api/2.0/mlflow/experiments/get-by-name?{q}")["experiment"]
    found = _http("POST", f"{server}/api/2.0/mlflow/runs/search", {
        "experiment_ids": [exp["experiment_id"]], "filter": "tags.`apc.kind` = 'study'", "max_results": 10,
        "order_by": ["attributes.start_time DESC"]}).get("runs") or []
    if not found:
        raise SystemExit(f"experiment {experiment!r} has no study run: run the workflow (its track rule) first")
    study = found[0]
    points = _http("POST", f"{server}/api/2.0/mlflow/runs/search", {
        "experiment_ids": [exp["experiment_id"]], "max_results": 50,
        "filter": f"tags.`apc.kind` = 'frontier' and tags.`mlflow.parentRunId` = '{study['info']['run_id']}'"})
    return exp["experiment_id"], study, points.get("runs") or []


def _columns(study: dict) -> tuple[list[str], list[str]]:
    """The study's headline columns: metrics (the references, each projection set's least compute to a
    level, the upper bound's to 1.05x) and tags (the lines that get there)."""
    keys = [m["key"] for m in study["data"].get("metrics", [])]
    head = [k for k in keys if k.count("/") == 1 and k.split("/")[1].startswith("compute_at_")
            and not k.endswith(("_lo", "_hi"))]
    upper = [k for k in keys if k.endswith("/upper_bound/compute_at_1.05x")]
    tags = [t["key"] for t in study["data"].get("tags", []) if t["key"].endswith(("line_at_1.05x", "line_at_1.25x"))]
    return [k for k in STUDY_COLUMNS if k in keys] + sorted(head) + sorted(upper), sorted(tags)


def _show_columns(b: Browser, exp_id: str, metrics: list[str], tags: list[str]) -> None:
    """Show ``metrics`` and ``tags`` (names) as the runs table's only columns, as its Columns menu would, by
    writing the table's saved state (``localStorage``); takes effect on the next page load."""
    keys = b.js("return Object.keys(window.localStorage);")
    state_key = next((k for k in keys if "ExperimentPage" in k and f'"{exp_id}"' in k), None)
    if state_key is None:
        raise SystemExit(f"the runs table kept no state in localStorage (keys: {keys})")
    state = json.loads(b.js("return window.localStorage.getItem(arguments[0]);", state_key) or "{}")
    cols = [f"metrics.`{c}`" for c in metrics] + [f"tags.`{t}`" for t in tags]
    widths = {c: 36 + 6.5 * len(name) for c, name in zip(cols, metrics + tags)}  # a header's width, about
    state.update(selectedColumns=cols, columnOrder=cols, columnWidths=widths)
    b.js("window.localStorage.setItem(arguments[0], arguments[1]);", state_key, json.dumps(state))


def _quiet(b: Browser, server: str) -> None:
    """Keep the UI's assistant panel closed (it opens itself on a first visit)."""
    b.open(f"{server}/#/")
    b.js("localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');"
         "localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');")


def _load(b: Browser, address: str) -> None:
    """Open ``address`` as a fresh page load (a hash change alone keeps the page's state in memory)."""
    b.open("about:blank")
    b.open(address)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", type=Path, default=ROOT / "results" / "mlflow.db", help="sqlite MLflow store")
    ap.add_argument("--experiment", default="apc")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    ap.add_argument("--chromedriver", default=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    a = ap.parse_args(argv)
    for path, what in ((a.store, "MLflow store"), (Path(a.chromium), "chromium"), (Path(a.chromedriver), "chromedriver")):
        if not path.is_file():
            raise SystemExit(f"{what} not found: {path}" + ("" if what == "MLflow store" else
                             " (apt-get install -y chromium chromium-driver)"))
    a.out.mkdir(parents=True, exist_ok=True)
    mlflow = Path(sys.executable).with_name("mlflow")
    with tempfile.TemporaryDirectory(prefix="apc-screenshot-") as tmpdir:
        tmp = Path(tmpdir)
        db = tmp / "mlflow.db"
        shutil.copyfile(a.store, db)  # the server migrates and writes its store: never the run's own
        port = _free_port()
        server = f"http://127.0.0.1:{port}"
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        cmd = [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
        with _process(cmd, tmp / "server.log", env) as proc:
            _wait_http(f"{server}/health", "mlflow server", proc)
            exp_id, study, points = _study(server, a.experiment)
            with _browser(a.chromium, a.chromedriver, tmp) as b:  # a fresh profile: the UI's own first choice
                b.open(f"{server}/#/experiments/{exp_id}")
                b.wait_text(["Traces", "Run Name", "Run name"])
                time.sleep(3)
                b.screenshot(a.out / "mlflow-first-open.png")
            with _browser(a.chromium, a.chromedriver, tmp) as b:
                _quiet(b, server)
                b.open(f"{server}/{runs_page(exp_id)}")
                b.wait_text(["Run Name", "Run name"])
                _show_columns(b, exp_id, *_columns(study))
                _load(b, f"{server}/{runs_page(exp_id)}")
                b.wait_text([study["info"]["run_name"]])
                time.sleep(3)
                b.screenshot(a.out / "mlflow-runs.png")
                ids = [study["info"]["run_id"]] if not points else [r["info"]["run_id"] for r in points]
                q = urllib.parse.urlencode({"runs": json.dumps(ids), "experiments": json.dumps([exp_id])})
                _load(b, f"{server}/#/compare-runs?{q}&{UI_VIEW_QUERY}")
                b.wait_text(["Run details"])
                time.sleep(3)
                b.js(SCROLL_TO_RUNS)
                time.sleep(2)
                b.screenshot(a.out / "mlflow-compare.png")


if __name__ == "__main__":
    main()
