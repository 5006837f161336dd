"""The frontier of a config, planned from the line registry: its lines, their shares, points, calibrations and
input files, the ``frontier.lines`` schema and its checks.  Imports no torch, so a config is checked and a
workflow planned without it.

``frontier.lines`` maps a training-free line family to its settings (``{}``: its defaults, ``false``: off, so
that a preset can drop a line it inherits)::

    frontier:
      lines:
        threshold: {}
        cats: {}
        teal: {allocation: [uniform, block]}
        griffin: {prompt: null}

A family's keys and their schema are its class's ``config`` and ``config_schema`` (:class:`apc.lines.Line`), so the
schema of ``frontier.lines`` is generated from the registry (:func:`with_line_schema`); an unknown family or key
stops with the registered ones named.  The cluster, predictor and expert lines come from the config's cells
(``frontier.cells``, ``predict``, ``experts``), each family naming its own (:meth:`apc.lines.Line.line_names`).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Mapping

from apc.common.errors import ConfigError
from apc.common.frontier import Point, frontier_psets
from apc.lines.base import LineSpec, WorkflowInputs
from apc.lines.registry import all_lines, parse

__all__ = ["calibration_lines", "check_lines", "configured", "frontier_lines", "frontier_points", "job_groups",
           "line_cells", "line_inputs", "line_settings", "line_shares", "lines_schema", "own_job_lines",
           "resolve_config", "settings_of", "with_line_schema"]

#: ``model_type`` values of FFNs without a gate (a ``gated`` line needs a Llama-style gated FFN)
UNGATED_MODEL_TYPES = frozenset({"opt", "gpt2", "gpt_neox", "gptj", "falcon", "bloom", "gpt_bigcode", "phi"})


def _training_free() -> dict:
    return {f: impl for f, impl in all_lines().items() if impl.training_free}


def lines_schema() -> dict:
    """The JSON schema of ``frontier.lines``: one optional key per registered training-free family, its value
    ``false`` or an object of the family's ``config_schema`` keys."""
    props = {}
    for family, impl in _training_free().items():
        body = {"type": "object", "additionalProperties": False, "properties": dict(impl.config_schema)}
        doc = (type(impl).__doc__ or impl.__class__.__module__).strip().split("\n")[0]
        props[family] = {"anyOf": [body, {"const": False}], "description": doc}
    return {"type": "object", "additionalProperties": False, "properties": props,
            "description": "training-free lines of the frontier (apc.lines): family: {its settings} ({}: defaults, "
                           "false: off); registered: " + ", ".join(props)}


def with_line_schema(schema: dict) -> dict:
    """``schema`` (the config schema) with ``frontier.lines`` generated from the registry (a copy)."""
    out = copy.deepcopy(schema)
    out["properties"]["frontier"]["properties"]["lines"] = lines_schema()
    return out


def configured(config: dict) -> dict[str, dict]:
    """``{family: settings}`` of the lines ``frontier.lines`` turns on, in plot order, each line's defaults filled in."""
    given = (config.get("frontier") or {}).get("lines") or {}
    return {family: {**copy.deepcopy(dict(impl.config)), **dict(given[family] or {})}
            for family, impl in _training_free().items() if family in given and given[family] is not False}


def line_settings(config: dict, spec: LineSpec) -> dict:
    """The settings of ``spec``'s family (``frontier.lines.<family>``; ``{}`` for a line of the cells) without the
    keys that only name the family's lines (:attr:`apc.lines.Line.naming_keys`)."""
    keys = spec.impl.naming_keys
    return {k: v for k, v in configured(config).get(spec.family, {}).items() if k not in keys}


def resolve_config(raw: dict, schema: dict | None = None, root: str | Path = ".") -> dict:
    """:func:`apc.common.config.resolve` with ``frontier.lines`` checked against the registry: its schema
    generated (:func:`with_line_schema`), its settings defaulted (:func:`configured`) and checked
    (:func:`check_lines`).  :class:`ConfigError` naming the key otherwise."""
    from apc.common.config import load_schema, resolve

    config = resolve(raw, with_line_schema(schema or load_schema()), root=root)
    config["frontier"]["lines"] = configured(config)
    check_lines(config, root)
    return config


def _model_type(config: dict, root: str | Path) -> str | None:
    path = Path(str(config["model"]["name_or_path"])).expanduser()
    path = (path if path.is_absolute() else Path(root) / path) / "config.json"
    try:
        return json.loads(path.read_text()).get("model_type")
    except (OSError, ValueError):
        return None  # the embedded model or a hub id: checked when the model is loaded


def check_lines(config: dict, root: str | Path = ".") -> None:
    """The checks of ``frontier.lines`` the schema cannot make: a ``gated`` line needs the projection set
    ``[down_in]`` and a Llama-style gated FFN; each line checks its own settings (:meth:`apc.lines.Line.check`)."""
    psets = frontier_psets(config)
    if not psets:
        return
    lines = configured(config)
    gated = [f for f in lines if all_lines()[f].gated]
    if gated:
        bad = {name: projs for name, projs in psets.items() if list(projs) != ["down_in"]}
        if bad:
            raise ConfigError(f"config key 'frontier.lines': {', '.join(gated)} mask the down_proj input of a gated FFN; "
                              f"frontier.pset {bad} is not [down_in] (turn them off or set frontier.pset to "
                              "{down_in: [down_in]})")
        model_type = _model_type(config, root)
        if model_type is not None:
            from apc.common.families import family_of_model_type

            family = family_of_model_type(model_type)
            if model_type in UNGATED_MODEL_TYPES or (family is not None and family.name != "gated"):
                what = "has no gate" if model_type in UNGATED_MODEL_TYPES or (family and family.name == "plain") \
                    else f"has a {family.name} FFN, not a Llama-style gated one"
                raise ConfigError(f"config key 'frontier.lines': {', '.join(gated)} need a Llama-style gated FFN, and "
                                  f"model {config['model']['name_or_path']!r} ({model_type}) {what}; turn them off "
                                  f"({', '.join(f'{g}: false' for g in gated)})")
    for family, settings in lines.items():
        all_lines()[family].check(settings, config)


def frontier_lines(config: dict, projections) -> list[str]:
    """Every line of a projection set of the frontier, in plot order: the configured training-free lines, then
    the lines of the cells (oracle, predicted, neuron, experts: each family's :meth:`~apc.lines.Line.line_names`)."""
    lines = configured(config)
    out = []
    for family, impl in all_lines().items():
        if impl.training_free and family not in lines:
            continue
        out += impl.line_names(lines.get(family, {}), config, projections=tuple(projections))
    return list(dict.fromkeys(out))


def line_shares(config: dict, line: str | LineSpec) -> list[float]:
    """Kept shares of one line's points: the frontier's, or where the line places itself (CATS: at the
    frontier's compute shares; :meth:`apc.lines.Line.shares`)."""
    spec = line if isinstance(line, LineSpec) else parse(line)
    return [float(s) for s in spec.impl.shares(spec, [float(s) for s in config["frontier"]["kept_shares"]])]


def frontier_points(config: dict) -> list[Point]:
    """Every point: each projection set x line x kept share."""
    return [Point(pset, line, share) for pset, projs in frontier_psets(config).items()
            for line in frontier_lines(config, projs) for share in line_shares(config, line)]


def calibration_lines(config: dict) -> list[str]:
    """The lines with a calibration of their own (``Line.calibrates``): one ``calibrate_line`` job and file each."""
    return list(dict.fromkeys(line for projs in frontier_psets(config).values()
                              for line in frontier_lines(config, projs) if parse(line).impl.calibrates))


def calibration_inputs(config: dict, layout, line: str) -> dict:
    """The input files of one line's ``calibrate_line`` job: the model and the train FFN inputs, and the train
    tokens for a line that calibrates on the attention inputs too (:meth:`apc.lines.Line.calibration_needs`)."""
    spec = parse(line)
    ins = {"model": layout.manifest(), "ffn": layout.ffn_inputs("train")}
    if "attention" in spec.impl.calibration_needs(spec):
        ins["tokens"] = layout.tokens("train")
    return ins


def job_groups(config: dict) -> list[tuple[tuple[float, ...], list[str]]]:
    """``[(kept shares, lines)]``: the lines of the frontier's ``frontier_line`` jobs grouped by their kept shares
    (one rule per group, the same body; lines with a job of their own, ``Line.own_job``, left out)."""
    groups: dict = {}
    for projs in frontier_psets(config).values():
        for line in frontier_lines(config, projs):
            spec = parse(line)
            if not spec.impl.own_job:
                groups.setdefault(tuple(line_shares(config, spec)), []).append(line)
    return [(shares, list(dict.fromkeys(lines))) for shares, lines in groups.items()]


def own_job_lines(config: dict) -> list[str]:
    """The frontier's lines that keep a job of their own (``Line.own_job``)."""
    return list(dict.fromkeys(line for projs in frontier_psets(config).values()
                              for line in frontier_lines(config, projs) if parse(line).impl.own_job))


def line_inputs(config: dict, layout, pset: str, line: str) -> dict:
    """The input files of one line's frontier job: the model, the test tokens, the thresholds, the dense
    reference, its calibration (``calibration``) and what the line asks for
    (:meth:`apc.lines.Line.workflow_inputs`)."""
    spec = parse(line)
    ins = {"model": layout.manifest(), "tokens": layout.tokens("test"), "thresholds": layout.thresholds(),
           "reference": layout.ppl_reference()}
    if spec.impl.calibrates:
        ins["calibration"] = layout.line_calibration(line)
    if (config.get("frontier") or {}).get("generation"):
        ins["generation"] = layout.generation_dense()
        ins["generation_prefill"] = layout.generation_prefill()
    ctx = WorkflowInputs(layout=layout, config=config)
    ins.update(spec.impl.workflow_inputs(spec, ctx, projections=tuple(frontier_psets(config)[pset]),
                                         shares=line_shares(config, spec)))
    return ins


def line_cells(config: dict, pset: str, line: str) -> list[dict]:
    """``[{proj: cell key}]`` per kept share: the clustering cells a cluster line reads (``{}`` for other lines)."""
    from apc.common.layout import Cell

    spec = parse(line)
    if not spec.is_cluster:
        return [{} for _ in line_shares(config, spec)]
    return [{q: Cell(q, spec.scope, spec.method, spec.k, float(s), spec.seed).key for q in frontier_psets(config)[pset]}
            for s in line_shares(config, spec)]


def settings_of(config: dict, line: str) -> Mapping:
    """What a line's job depends on beyond its input files: its family's settings (a rule's params)."""
    return line_settings(config, parse(line))
