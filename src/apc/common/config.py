"""Resolve the workflow configuration: presets, overrides, types, derived entries.

The raw config (``config.yaml`` merged with ``--config`` by Snakemake) holds
``preset``, ``presets`` and, at top level, any overrides.  The resolved config
is the chosen preset (following ``inherits``) with the overrides merged in,
string values from the command line coerced to the schema's types, checked
(:mod:`apc.common.config_checks`), and completed with the entries other keys
imply (:func:`add_greedy_variants`).  Every problem is reported as one
:class:`~apc.common.errors.ConfigError` line that names the key.  Neither module
imports torch.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from apc.common.config_checks import check_methods, check_schema, check_settings
from apc.common.errors import ConfigError
from apc.common.families import PROJECTIONS
from apc.common.frontier import greedy_method

__all__ = ["SCHEMA_PATH", "REPLACED_WHOLE", "load_schema", "deep_merge", "resolve",
           "add_greedy_variants"]

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"


def load_schema(path: str | Path = SCHEMA_PATH) -> dict:
    """The config JSON schema as a dict, its projection names taken from the projection table."""
    schema = yaml.safe_load(Path(path).read_text())
    schema["$defs"]["projection"]["enum"] = list(PROJECTIONS)
    return schema


#: Mappings of user-named entries: an override replaces them whole instead of merging.
REPLACED_WHOLE = frozenset({"psets", "pset"})


def deep_merge(base: dict, over: dict) -> dict:
    """Return ``base`` updated recursively with ``over`` (neither is modified).

    Keys in :data:`REPLACED_WHOLE` are replaced, not merged.
    """
    out = copy.deepcopy(base)
    for key, val in over.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict) and key not in REPLACED_WHOLE:
            out[key] = deep_merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


def resolve(raw: dict, schema: dict | None = None, root: str | Path = ".") -> dict:
    """Resolve ``raw`` into a checked config dict (see module docstring)."""
    schema = schema or load_schema()
    raw = dict(raw)
    presets = raw.pop("presets", None) or {}
    name = str(raw.pop("preset", "default"))
    if name not in presets:
        raise ConfigError(f"config key 'preset': unknown preset {name!r}; known: {', '.join(sorted(presets))}")
    resolved = _preset(presets, name, seen=())
    resolved = deep_merge(resolved, _expand_dotted(raw))
    resolved["preset"] = name
    resolved = _coerce(resolved, schema, schema, path="")
    check_schema(resolved, schema)
    check_settings(resolved, root=root)  # first: the frontier cells the variants come from are checked here
    add_greedy_variants(resolved)
    check_methods(resolved)
    return resolved


def add_greedy_variants(config: dict) -> None:
    """Add to ``cluster.options`` (in place) the variant ``{method}_greedy`` of each frontier cell with
    ``allocation: greedy``: the cell's method with its options plus ``allocation: greedy``, so its
    cells have names of their own.  An entry already there is kept."""
    options = config["cluster"]["options"]
    for c in (config.get("frontier") or {}).get("cells") or []:
        if c.get("allocation", "uniform") == "greedy":
            entry = dict(options.get(c["method"]) or {})
            entry.setdefault("method", c["method"])
            options.setdefault(greedy_method(c["method"]), {**entry, "allocation": "greedy"})


def _preset(presets: dict, name: str, seen: tuple) -> dict:
    if name in seen:
        raise ConfigError(f"config key 'presets.{name}.inherits': inheritance loop {' -> '.join(seen + (name,))}")
    if name not in presets:
        raise ConfigError(f"config key 'presets.{seen[-1]}.inherits': unknown preset {name!r}")
    body = dict(presets[name] or {})
    parent = body.pop("inherits", None)
    if parent is None:
        return body
    return deep_merge(_preset(presets, parent, seen + (name,)), body)


def _expand_dotted(raw: dict) -> dict:
    """Turn ``{'cluster.max_iter': 3}`` into ``{'cluster': {'max_iter': 3}}``."""
    out: dict = {}
    for key, val in raw.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = val if not isinstance(node.get(parts[-1]), dict) else deep_merge(node[parts[-1]], val)
    return out


def _resolve_ref(schema: dict, root: dict) -> dict:
    while "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = {**node, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _coerce(value: Any, schema: dict, root: dict, path: str) -> Any:
    """Coerce strings given on the command line (Snakemake parses nested values as strings)."""
    schema = _resolve_ref(schema, root)
    if isinstance(value, (dict, list)) and ("anyOf" in schema or "oneOf" in schema):
        want = "object" if isinstance(value, dict) else "array"
        for alt in schema.get("anyOf", []) + schema.get("oneOf", []):
            alt = _resolve_ref(alt, root)
            if alt.get("type") == want:
                schema = alt
                break
    if isinstance(value, dict):
        props = schema.get("properties", {})
        extra = schema.get("additionalProperties")
        return {
            k: _coerce(v, props.get(k, extra if isinstance(extra, dict) else {}), root, f"{path}.{k}".lstrip("."))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_coerce(v, schema.get("items", {}), root, path) for v in value]
    if not isinstance(value, str):
        return value
    types = _types(schema, root)
    if "null" in types and value.lower() in ("null", "none", "~"):
        return None
    if "integer" in types:
        try:
            return int(value)
        except ValueError:
            pass
    if "number" in types:
        try:
            return float(value)
        except ValueError:
            pass
    if "boolean" in types and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _types(schema: dict, root: dict) -> set:
    out: set = set()
    t = schema.get("type")
    if isinstance(t, str):
        out.add(t)
    elif isinstance(t, list):
        out.update(t)
    for alt in schema.get("anyOf", []) + schema.get("oneOf", []):
        out |= _types(_resolve_ref(alt, root), root)
    return out


