"""Raw benchmark tables: a CSV whose first line names the command and the commit it ran at."""

from __future__ import annotations

import csv
import os
import shlex
import subprocess
import sys
from pathlib import Path

from apc.common.atomic import atomic_path


def commit() -> str:
    """The short commit of this checkout (``APC_COMMIT`` where the copy has no git history), or ``unknown``."""
    if os.environ.get("APC_COMMIT"):
        return os.environ["APC_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        out = ""
    return out or "unknown"


def write_csv(path, rows, columns, argv, note: str = "") -> None:
    """``rows`` (dicts) under ``# python benchmarks/<script> <argv>; commit <hash>[; note]``, written atomically."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        fh.write(f"# python benchmarks/{Path(sys.argv[0]).name} {shlex.join(argv)}; commit {commit()}"
                 + (f"; {note}" if note else "") + "\n")
        w = csv.DictWriter(fh, fieldnames=list(columns))
        w.writeheader()
        w.writerows(rows)
