"""Every docs/results/<run>/ has a machine-written manifest (PROVENANCE.json, docs/collect_run.py) that matches its
files, names commits of this history, and a page citing a run made from a dirty tree says so."""

from __future__ import annotations

import inspect
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
sys.path.insert(0, str(ROOT / "docs"))

import collect_run  # noqa: E402

RUNS = sorted(p.name for p in RESULTS.iterdir() if p.is_dir())
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
#: what a page says of a run made from a tree with uncommitted changes, in the paragraph (or cog block) citing it
SAYS_DIRTY = re.compile(r"uncommitted|dirty tree", re.I)
COG = re.compile(r"<!-- \[\[\[cog(.*?)\]\]\] -->(.*?)<!-- \[\[\[end\]\]\] -->", re.S)


def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)


def _manifest(run: str, results: Path = RESULTS) -> dict:
    f = results / run / collect_run.MANIFEST
    if not f.exists():
        pytest.fail(f"docs/results/{run} has no {collect_run.MANIFEST}: write it with docs/collect_run.py --manifest-only")
    return json.loads(f.read_text())


def render_defaults(runs: list[str]) -> dict[str, set[str]]:
    """Run names that docs/render.py's functions take by default: a page calling R.fn() cites them."""
    pytest.importorskip("pandas")
    import render

    out = {}
    for name, fn in inspect.getmembers(render, inspect.isfunction):
        for prm in inspect.signature(fn).parameters.values():
            if isinstance(prm.default, str) and prm.default in runs:
                out.setdefault(name, set()).add(prm.default)
    return out


def segments(text: str) -> list[str]:
    """A page cut into the pieces a citation and its caveat share: each cog block (code and output) whole, and the
    paragraphs (between blank lines) of the text around them."""
    out, at = [], 0
    for m in COG.finditer(text):
        out += re.split(r"\n\s*\n", text[at:m.start()])
        out.append(m.group(0))
        at = m.end()
    return out + re.split(r"\n\s*\n", text[at:])


def cited_runs(segment: str, runs: list[str], defaults: dict[str, set[str]]) -> set[str]:
    """The runs a piece of a page cites: a `docs/results/<run>` path or a `results/<run>/` link, and in a cog
    block a quoted run name or a call of a render function whose default is a run."""
    names = set(re.findall(r"docs/results/([\w.-]+)", segment)) | set(re.findall(r"\]\((?:\./)?results/([\w.-]+)/",
                                                                                segment))
    for code in COG.findall(segment):
        names |= set(re.findall(r"""["']([\w.-]+)["']""", code[0]))
        for fn in re.findall(r"\bR\.(\w+)\(", code[0]):
            names |= defaults.get(fn, set())
    return names & set(runs)


def dirty_citations(pages: list[Path], results: Path) -> list[str]:
    """Each page piece that cites a run whose manifest says dirty and does not say so."""
    runs = sorted(p.name for p in results.iterdir() if p.is_dir())
    dirty = {r for r in runs if (results / r / collect_run.MANIFEST).exists() and _manifest(r, results)["dirty"]}
    defaults = render_defaults(runs) if dirty else {}
    bad = []
    for page in pages:
        for seg in segments(page.read_text()):
            for run in sorted(cited_runs(seg, runs, defaults) & dirty):
                if not SAYS_DIRTY.search(seg):
                    bad.append(f"{page.name}: cites {run} (made from a dirty tree) without saying so: {seg[:120]!r}")
    return bad


@pytest.mark.parametrize("run", RUNS)
def test_manifest_matches_the_folder(run):
    problems = collect_run.check_manifest(RESULTS / run)
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("run", RUNS)
def test_manifest_names_the_code_and_the_command(run):
    m = _manifest(run)
    assert re.fullmatch(r"[0-9a-f]{40}", m["commit"]), m["commit"]
    assert m["dirty"] in (True, False, None)
    assert m["command"].strip() and m["machine"].strip()
    for part in m.get("parts", []):
        assert re.fullmatch(r"[0-9a-f]{40}", part["commit"]) and part["command"].strip() and part["files"]


@pytest.mark.parametrize("run", RUNS)
def test_manifest_commits_are_ancestors_of_head(run):
    if _git("rev-parse", "--is-inside-work-tree").stdout.strip() != "true":
        pytest.skip("not a git checkout: the manifests' commits cannot be checked against HEAD")
    for commit in collect_run.manifest_commits(_manifest(run)):
        if _git("cat-file", "-e", f"{commit}^{{commit}}").returncode != 0:
            pytest.skip(f"commit {commit[:10]} of {run} is not in this clone (a shallow clone?)")
        r = _git("merge-base", "--is-ancestor", commit, "HEAD")
        assert r.returncode == 0, f"{run}: manifest commit {commit} is not an ancestor of HEAD"


def test_pages_citing_a_dirty_run_say_so():
    bad = dirty_citations(PAGES, RESULTS)
    assert bad == [], "\n".join(bad)


def test_one_changed_byte_fails_the_check(tmp_path):
    src = RESULTS / "plans"
    copy = tmp_path / "plans"
    shutil.copytree(src, copy)
    assert collect_run.check_manifest(copy) == []
    raw = copy / "jobs-default.tsv"
    data = bytearray(raw.read_bytes())
    data[-2] ^= 1
    raw.write_bytes(bytes(data))
    problems = collect_run.check_manifest(copy)
    assert problems == [f"{copy}/jobs-default.tsv: sha256 differs from {collect_run.MANIFEST}'s"]
    (copy / "extra.txt").write_text("x\n")
    (copy / "jobs-smoke.tsv").unlink()
    problems = collect_run.check_manifest(copy)
    assert any("extra.txt: not in" in p for p in problems) and any("jobs-smoke.tsv: listed" in p for p in problems)


def test_a_dirty_run_cited_without_saying_so_fails(tmp_path):
    results = tmp_path / "results"
    (results / "r1").mkdir(parents=True)
    (results / "r1" / "a.csv").write_text("x\n1\n")
    head = _git("rev-parse", "HEAD").stdout.strip()
    if not head:
        pytest.skip("not a git checkout")
    collect_run.write_manifest(results / "r1", commit=head, dirty=True, command="make run", machine_line="test",
                               collected_by="test")
    page = tmp_path / "page.md"
    page.write_text("Intro.\n\nThe run in `docs/results/r1/` shows this.\n\n"
                    '<!-- [[[cog cog.out(R.text("r1", "a.csv")) ]]] -->\n1\n<!-- [[[end]]] -->\n')
    assert len(dirty_citations([page], results)) == 2
    page.write_text("Intro.\n\nThe run in `docs/results/r1/` (from a tree with uncommitted changes) shows this.\n")
    assert dirty_citations([page], results) == []
    collect_run.write_manifest(results / "r1", commit=head, dirty=False, command="make run", machine_line="test",
                               collected_by="test")
    page.write_text("The run in `docs/results/r1/` shows this.\n")
    assert dirty_citations([page], results) == []


def test_compare_counts_the_rows_and_columns_that_differ(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "t.csv").write_text("k,v,w\n1,2,3\n4,5,6\n7,8,9\n")
    (b / "t.csv").write_text("k,v,w\n1,2,3\n4,0,6\n7,0,0\n")
    (a / "same.txt").write_text("s\n")
    (b / "same.txt").write_text("s\n")
    (a / "mine.txt").write_text("m\n")
    c = collect_run.compare(a, str(b))["files"]
    assert c["same.txt"] == {"status": "identical"} and c["mine.txt"] == {"status": "only_here"}
    assert c["t.csv"] == {"status": "different", "rows": 3, "rows_differing": 2, "columns_differing": {"v": 2, "w": 1}}


def test_render_defaults_are_found():
    """The citation finder sees the runs that render functions take by default (else a page calling one would cite
    nothing)."""
    defaults = render_defaults(RUNS)
    assert defaults, "no render function takes a docs/results run by default"
    seg = '<!-- [[[cog cog.out(R.%s()) ]]] -->\nx\n<!-- [[[end]]] -->' % next(iter(defaults))
    assert cited_runs(seg, RUNS, defaults) == defaults[next(iter(defaults))]


def test_collect_writes_a_manifest_of_what_it_copied(tmp_path):
    head = _git("rev-parse", "HEAD").stdout.strip()
    if not head:
        pytest.skip("not a git checkout")
    res = tmp_path / "results"
    (res / "ppl").mkdir(parents=True)
    (res / "frontier.csv").write_text("line,share\nteal,0.6\n")
    (res / "ppl" / "dense.json").write_text("{}\n")
    dest = tmp_path / "docs" / "run1"
    with pytest.raises(SystemExit, match="no git checkout"):
        collect_run.collect(res, dest, command="make run", machine_line="test")
    collect_run.collect(res, dest, command="make run", machine_line="test", commit=head[:10])
    m = _manifest("run1", tmp_path / "docs")
    assert m["commit"] == head and m["dirty"] is None and m["command"] == "make run"
    assert set(m["files"]) == {"COMMAND", "frontier.csv", "ppl/dense.json", "jobs.csv", "du.tsv"}
    assert collect_run.check_manifest(dest) == []
