"""Frontier lines: one module per method, one registry that every consumer reads.

Each line declares what decides its mask, its batch-view scope, whether it is deployable (oracle masks and
oracle routers are upper bounds), its config fragment under ``frontier.lines``, its calibration, its keep
mask for a share (torch and fused route), its FLOPs overhead and its plot style (:mod:`apc.lines.base`).
docs/adding-a-line.md lists the registered lines.

Add a method as one file: ``src/apc/lines/<name>.py`` with a :class:`Line` subclass decorated with
:func:`register_line` (every module of this package is loaded), or, outside this project, an
installed package whose ``apc.lines`` entry point names the class (docs/adding-a-line.md).
"""

from apc.lines.base import Line, LineSpec, MaskRule, WorkflowInputs
from apc.lines.registry import ENTRY_POINT_GROUP, all_lines, builtin_modules, get_line, parse, register_line

__all__ = ["ENTRY_POINT_GROUP", "Line", "LineSpec", "MaskRule", "WorkflowInputs", "all_lines", "builtin_modules",
           "get_line", "parse", "register_line"]
