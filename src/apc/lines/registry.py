"""The registry of frontier lines: built-in lines registered lazily, plugins through entry points.

A built-in line is a module of :mod:`apc.lines` (every module but ``base``, ``registry`` and those whose
name starts with ``_``); they are imported the first time the registry is read, so adding a line is adding
its file.  A line in another installed package registers through the ``apc.lines`` entry-point
group (``[project.entry-points."apc.lines"] myline = "mypkg.myline:MyLine"``): the entry point names a
:class:`apc.lines.base.Line` subclass (or a module that registers one on import).
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from importlib.metadata import entry_points

from apc.lines.base import _LINES, _LOADERS, DECIDED_BY, SCOPES, Line, LineSpec, registered

__all__ = ["ENTRY_POINT_GROUP", "builtin_modules", "line_of_mode", "all_lines", "get_line", "load_plugins", "parse",
           "register_line"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "apc.lines"
_NOT_LINES = ("base", "registry", "plan", "store")  # the interface and the planning: no line



def register_line(cls: type[Line]) -> type[Line]:
    """Class decorator: register ``cls`` under ``cls.family`` (one family, one class)."""
    if not (isinstance(cls, type) and issubclass(cls, Line)):
        raise TypeError(f"register_line takes a Line subclass, got {cls!r}")
    if not cls.family or not cls.pattern or not cls.mode:
        raise ValueError(f"line class {cls.__name__} must set family, pattern and mode")
    if cls.decided_by not in DECIDED_BY:
        raise ValueError(f"line {cls.family!r}: decided_by must be one of {DECIDED_BY}, got {cls.decided_by!r}")
    if cls.scope not in SCOPES:
        raise ValueError(f"line {cls.family!r}: scope must be one of {SCOPES}, got {cls.scope!r}")
    old = _LINES.get(cls.family)
    if old is not None and type(old) is not cls and type(old).__qualname__ != cls.__qualname__:
        raise ValueError(f"line family {cls.family!r} is registered twice ({type(old).__module__} and {cls.__module__})")
    _LINES[cls.family] = cls()
    return cls


def builtin_modules() -> list[str]:
    """The names of the built-in line modules (the files of this package)."""
    import apc.lines as pkg

    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__)
                  if m.name not in _NOT_LINES and not m.name.startswith("_"))


def _load() -> None:
    for name in builtin_modules():
        importlib.import_module(f"apc.lines.{name}")
    load_plugins()


def load_plugins() -> list[str]:
    """Register the lines of the ``apc.lines`` entry points not registered yet (the registry does it on first use;
    call it again after installing a plugin into a running process); returns the entry points' names."""
    importlib.invalidate_caches()
    names = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        names.append(ep.name)
        try:
            obj = ep.load()
        except Exception as err:  # a broken plugin names itself, it does not hide the others
            raise ImportError(f"line plugin {ep.name!r} ({ep.value}) of entry-point group {ENTRY_POINT_GROUP!r} "
                              f"failed to load: {err}") from err
        if isinstance(obj, type) and issubclass(obj, Line) and obj.family not in _LINES:
            register_line(obj)
        log.debug("line plugin %s loaded from %s", ep.name, ep.value)


def all_lines() -> dict[str, Line]:
    """``{family: line}`` of every registered line, in plot order (``Line.order``, then the family)."""
    return registered()


def get_line(family: str) -> Line:
    """The line of ``family``; ``KeyError`` naming the registered ones otherwise."""
    lines = all_lines()
    if family not in lines:
        raise KeyError(f"no line family {family!r}; registered: {', '.join(lines)}")
    return lines[family]


def parse(line: str) -> LineSpec:
    """The spec of a line string: the registered line whose pattern matches it whole."""
    return LineSpec.parse(line)


_LOADERS.append(_load)


def line_of_mode(mode: str) -> Line | None:
    """The line whose masks run under perplexity mode ``mode`` with a rule of its own (None: a built-in mode)."""
    for impl in all_lines().values():
        if impl.mode == mode and type(impl).rule is not Line.rule:
            return impl
    return None
