"""The data stamp of a frontier plot: a sha256 of what it was drawn from, written into the plot and checked later.

A stamp covers the plotting code (the source text of :data:`CODE_MODULES`), the frontier table's header and the
table's rows of the plotted projection sets (their raw CSV lines), and the reference perplexities the plot reads
(dense, and true sparse of those sets, as canonical JSON).  A plot whose stored stamp differs from the stamp of
the committed files is stale.  PNG plots keep it in a text chunk (:data:`KEY`), HTML plots in a
``<meta name="apc-data-sha256">`` tag; both also record the projection sets (:data:`PSETS_KEY`).
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Iterable

from apc.common.atomic import read_json

KEY = "apc:data-sha256"
PSETS_KEY = "apc:psets"
#: the modules whose code draws a frontier plot: changing any of them makes every stamped plot stale
CODE_MODULES = ("apc.results.plots", "apc.results.frontier_lines", "apc.results.frontier_plots",
                "apc.results.frontier_html", "apc.results.plot_stamp")


def code_digest() -> str:
    """sha256 of the source text of :data:`CODE_MODULES` and of the built-in line modules (their labels, colours and
    markers are drawn; a plugin's line is left out, so that installing one stales no committed plot)."""
    from apc.lines import builtin_modules

    h = hashlib.sha256()
    for name in (*CODE_MODULES, *(f"apc.lines.{m}" for m in builtin_modules())):
        h.update(name.encode() + b"\0" + inspect.getsource(importlib.import_module(name)).encode() + b"\0")
    return h.hexdigest()


def table_lines(table_path: str | os.PathLike, psets: Iterable[str]) -> list[str]:
    """The header and the raw CSV lines of the frontier table whose ``pset`` is in ``psets`` (file order)."""
    lines = Path(table_path).read_text().splitlines()
    if not lines:
        raise ValueError(f"{table_path}: empty frontier table")
    header = next(csv.reader([lines[0]]))
    if "pset" not in header:
        raise ValueError(f"{table_path}: no pset column in the header")
    col, want = header.index("pset"), set(psets)
    return [lines[0]] + [ln for ln in lines[1:] if ln and next(csv.reader([ln]))[col] in want]


def used_refs(refs: Iterable[str | os.PathLike], psets: Iterable[str]) -> list[dict]:
    """The reference results a plot of ``psets`` reads: the dense one and the true sparse ones of those sets."""
    want = set(psets)
    out = [read_json(p) for p in refs]
    return [r for r in out if r.get("mode") == "dense" or (r.get("mode") == "sparse" and r.get("pset") in want)]


def frontier_stamp(table_path: str | os.PathLike, refs: Iterable[str | os.PathLike], psets: Iterable[str]) -> str:
    """sha256 (hex) of the plotting code, the table's rows of ``psets`` and the references they read."""
    psets = sorted(set(psets))
    h = hashlib.sha256(code_digest().encode())
    h.update(json.dumps(psets).encode())
    for ln in table_lines(table_path, psets):
        h.update(ln.encode() + b"\n")
    for r in sorted((json.dumps(r, sort_keys=True) for r in used_refs(refs, psets))):
        h.update(r.encode() + b"\n")
    return h.hexdigest()


def png_metadata(stamp: str, psets: Iterable[str]) -> dict[str, str]:
    """The text chunks a stamped PNG carries."""
    return {KEY: stamp, PSETS_KEY: ",".join(sorted(set(psets)))}


def read_stamp(path: str | os.PathLike) -> tuple[str | None, list[str]]:
    """``(stamp, psets)`` stored in a PNG's text chunks or an HTML file's meta tags; ``(None, [])`` without one."""
    path = Path(path)
    if path.suffix == ".png":
        from PIL import Image

        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or {})
        stamp, psets = text.get(KEY), text.get(PSETS_KEY, "")
    else:
        head = path.read_text(errors="replace")[:20000]
        m = re.search(r'<meta name="apc-data-sha256" content="([0-9a-f]+)"', head)
        p = re.search(r'<meta name="apc-psets" content="([^"]*)"', head)
        stamp, psets = (m.group(1) if m else None), (p.group(1) if p else "")
    return stamp, [s for s in psets.split(",") if s]


def html_meta(stamp: str, psets: Iterable[str]) -> str:
    """The ``<meta>`` tags a stamped HTML file carries in its head."""
    return (f'<meta name="apc-data-sha256" content="{stamp}">\n'
            f'<meta name="apc-psets" content="{",".join(sorted(set(psets)))}">')
