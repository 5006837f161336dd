"""Progress bars and logging that degrade gracefully where tqdm is absent (e.g. a bare GPU box)."""

from __future__ import annotations

import logging
import sys

try:  # tqdm is a workflow nicety, not a dependency of the numeric core
    from tqdm.auto import tqdm as _tqdm
except ImportError:  # pragma: no cover - exercised only on minimal installs
    _tqdm = None


def progress(iterable=None, **kwargs):
    """``tqdm(iterable, **kwargs)`` if tqdm is installed, else ``iterable`` unchanged."""
    if _tqdm is None:
        return iterable
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 1.0)
    return _tqdm(iterable, **kwargs)


def get_logger(name: str) -> logging.Logger:
    """A logger that writes ``time level name: message`` lines to stderr."""
    logger = logging.getLogger(name)
    root = logging.getLogger("apc")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logger
