"""Checks of a resolved configuration that the JSON schema cannot express.

:func:`check_schema` runs the schema; :func:`check_settings` the cross-key checks (files, budgets,
projection sets, stores, the frontier); :func:`check_methods` the clustering methods of the sweep,
once :func:`apc.common.config.add_greedy_variants` has named the variants.  Each raises one
:class:`ConfigError` line naming the key.  Methods are resolved through :mod:`apc.common.methods`,
so no check imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from apc.common.errors import ConfigError
from apc.common.families import check_projections, family_of_model_type
from apc.common.methods import available_methods, fixed_k, method_spec
from apc.common.sweep import cell_projections, cluster_cells

__all__ = ["check_schema", "check_settings", "check_methods"]

#: old allocation names of frontier cells and their new ones (a config with the old name fails with the new one)
RENAMED_ALLOCATIONS = {"greedy": "layer-greedy"}


def check_schema(config: dict, schema: dict) -> None:
    """:class:`ConfigError` naming the first key of ``config`` that breaks the JSON ``schema``."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = errors[0]
        key = ".".join(str(p) for p in err.absolute_path)
        if err.validator == "additionalProperties":
            extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
            name = ".".join(filter(None, [key, extra[0] if extra else ""]))
            raise ConfigError(f"config key '{name}': unknown key (allowed here: {', '.join(err.schema.get('properties', {}))})")
        if err.validator == "required":
            raise ConfigError(f"config key '{key or '<top level>'}': {err.message}")
        raise ConfigError(f"config key '{key}': {_short(err)}")


def _short(err) -> str:
    if err.validator in ("anyOf", "oneOf"):
        return f"{json.dumps(err.instance)} is not valid ({err.schema.get('description', 'see the schema')})"
    return err.message


def check_settings(config: dict, root: str | Path = ".") -> None:
    """The cross-key checks of a schema-valid config that need no method variant: files and folders
    under ``root``, budgets, projection sets, stores and the frontier.  :class:`ConfigError` naming the key."""
    root = Path(root)
    name = config["model"]["name_or_path"]
    looks_local = name.startswith(("/", "./", "../", "~")) or (root / name).exists()
    if looks_local:
        path = Path(name).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.exists():
            raise ConfigError(f"config key 'model.name_or_path': no such model folder {name!r}")
        gguf = config["model"].get("gguf_file")
        if gguf and not (path / gguf).exists():
            raise ConfigError(f"config key 'model.gguf_file': {gguf!r} not found in {name!r}")
        _check_family(config, path)
    elif name.startswith("embedded:") and name != "embedded:smollm2":
        raise ConfigError(f"config key 'model.name_or_path': unknown embedded model {name!r} (known: embedded:smollm2)")
    data = config["data"]
    if data["source"] == "text":
        if not data.get("text_files"):
            raise ConfigError("config key 'data.text_files': source 'text' needs at least one file")
        for f in data["text_files"]:
            p = Path(f) if Path(f).is_absolute() else root / f
            if not p.exists():
                raise ConfigError(f"config key 'data.text_files': no such file {f!r}")
    table = (config.get("frontier") or {}).get("time_table")
    if table and not (Path(table) if Path(table).is_absolute() else root / table).is_file():
        raise ConfigError(f"config key 'frontier.time_table': no such file {table!r} (a benchmarks/bench_ffn_masks.py "
                          "or benchmarks/bench_decode.py table, or null)")
    if data["source"] == "huggingface" and not data.get("hf_path"):
        raise ConfigError("config key 'data.hf_path': source 'huggingface' needs a dataset path, e.g. wikitext")
    for key in ("train_tokens", "test_tokens"):
        budget = data[key]
        if budget is not None and budget < data["seq_len"]:
            raise ConfigError(f"config key 'data.{key}': budget {budget} is below one window of seq_len={data['seq_len']} tokens")
    ppl = config["perplexity"]["test_tokens"]
    if ppl is not None and ppl < data["seq_len"]:
        raise ConfigError(f"config key 'perplexity.test_tokens': budget {ppl} is below one window of seq_len={data['seq_len']} tokens")
    have = cell_projections(config)
    for pset, projs in config["perplexity"]["psets"].items():
        missing = [p for p in projs if p not in have]
        if missing:
            raise ConfigError(f"config key 'perplexity.psets.{pset}': projections {missing} are not in cluster.projections "
                              "(nor in cluster.cells)")
    missing = [p for p in have if p not in config["extract"]["projections"]]
    if missing:
        raise ConfigError(f"config key 'cluster.projections': {missing} are not extracted (extract.projections)")
    missing = [p for p in config["extract"].get("magnitudes", []) if p not in config["extract"]["projections"]]
    if missing:
        raise ConfigError(f"config key 'extract.magnitudes': {missing} are not extracted (extract.projections)")
    _check_store(config)
    _check_frontier(config, available_methods(), root)


def _check_store(config: dict) -> None:
    """Magnitude and FFN-input rows (where those stores are written: ``extract.magnitudes``, the frontier)
    are a subset of the pattern rows of their split (one seed, at most as many rows)."""
    st = config["store"]
    used = [name for name, on in (("magnitudes", config["extract"].get("magnitudes")),
                                  ("ffn_inputs", config["frontier"]["pset"])) if on]
    for split in ("train", "test"):
        cap = st["patterns"][split]
        if cap is None:
            continue
        for name in used:
            n = st[name][split]
            if n is None or n > cap:
                raise ConfigError(f"config key 'store.{name}.{split}': {'null (every token)' if n is None else n} "
                                  f"exceeds the {cap} pattern rows of "
                                  f"'store.patterns.{split}' (its tokens are a subset of the patterns'; at most {cap})")


def check_methods(config: dict) -> None:
    """Every method of the sweep and of ``cluster.cells`` resolves, and gets the data it needs (on a config
    whose method variants are added: :func:`apc.common.config.add_greedy_variants`)."""
    c = config["cluster"]
    for key, names in (("cluster.methods", c["methods"]), ("cluster.cells", [e["method"] for e in c.get("cells") or []])):
        for name in names:
            try:
                method_spec(name, c["options"])
            except ValueError as err:
                raise ConfigError(str(err).replace("'cluster.methods'", f"'{key}'")) from None
    for name, entry in c["options"].items():
        if "method" in entry:  # a variant outside the sweep must still name a method
            try:
                method_spec(name, c["options"])
            except ValueError as err:
                raise ConfigError(str(err)) from None
    magnitudes = config["extract"].get("magnitudes", [])
    for cell in cluster_cells(config):
        base, opts = method_spec(cell.method, c["options"])
        if base == "apc_weighted":
            if cell.proj not in magnitudes:
                raise ConfigError(f"config key 'extract.magnitudes': method {cell.method!r} (apc_weighted) clusters "
                                  f"projection {cell.proj!r}, whose magnitudes are not stored; add it to extract.magnitudes")
            if opts.get("weighting", "magnitude") == "output" and cell.proj != "down_in":
                raise ConfigError(f"config key 'cluster.options.{cell.method}.weighting': 'output' weighting is for "
                                  f"projection down_in only, not {cell.proj!r}")
        if base == "apc_product":
            g = opts.get("groups", 2)
            if isinstance(g, bool) or not isinstance(g, int) or g < 1:
                raise ConfigError(f"config key 'cluster.options.{cell.method}.groups': must be a positive integer, got {g!r}")


def _check_family(config: dict, folder: Path) -> None:
    """A local model folder's FFN family (from ``config.json``'s ``model_type``) has the configured
    projections, and a mixture of experts runs no frontier (its predictors read whole-FFN inputs)."""
    cfg = folder / "config.json"
    if not cfg.is_file():
        return  # a GGUF folder: its family is checked when the converted model is loaded
    family = family_of_model_type(json.loads(cfg.read_text()).get("model_type"))
    if family is None:
        return  # layer 0 decides when the model is loaded
    try:
        check_projections(family, config["extract"]["projections"])
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if family.experts and config["frontier"]["pset"]:
        raise ConfigError("config key 'frontier.pset': the frontier's predictors read the whole FFN input, which a "
                          f"mixture-of-experts expert ({family.models}) does not see; set frontier.pset: {{}}")


def _check_frontier(config: dict, methods, root: str | Path = ".") -> None:
    """Frontier keys the schema cannot check: projections extracted, shared pset names equal,
    cells of registered methods covering every layer, top_m within K."""
    f, seq_len = config["frontier"], config["data"]["seq_len"]
    if not f["pset"]:
        return
    for pset, projs in f["pset"].items():
        missing = [p for p in projs if p not in config["extract"]["projections"]]
        if missing:
            raise ConfigError(f"config key 'frontier.pset.{pset}': projections {missing} are not extracted "
                              "(extract.projections)")
        other = config["perplexity"]["psets"].get(pset)
        if other is not None and list(other) != list(projs):
            raise ConfigError(f"config key 'frontier.pset.{pset}': the name is a perplexity.psets entry with "
                              f"other projections {other}")
    if f["test_tokens"] is not None and f["test_tokens"] < seq_len:
        raise ConfigError(f"config key 'frontier.test_tokens': budget {f['test_tokens']} is below one window "
                          f"of seq_len={seq_len} tokens")
    if not f["cells"]:
        raise ConfigError("config key 'frontier.cells': needs at least one {method, k, scope} cell")
    renamed = [c["allocation"] for c in f["cells"] if c.get("allocation") in RENAMED_ALLOCATIONS]
    if renamed:
        raise ConfigError(f"config key 'frontier.cells': allocation {renamed[0]!r} is now called "
                          f"{RENAMED_ALLOCATIONS[renamed[0]]!r} (a greedy allocation across layers)")
    for c in f["cells"]:
        if c.get("allocation", "uniform") == "layer-greedy":
            if c["scope"] != "per_layer":
                raise ConfigError(f"config key 'frontier.cells': allocation 'layer-greedy' allocates per layer; cell {c} "
                                  "needs scope per_layer")
            bad = {name: projs for name, projs in f["pset"].items() if list(projs) != ["down_in"]}
            if bad:
                raise ConfigError(f"config key 'frontier.cells': allocation 'layer-greedy' is calibrated on down_in; "
                                  f"frontier.pset {bad} is not [down_in]")
        if c["method"] not in methods:
            raise ConfigError(f"config key 'frontier.cells': unknown method {c['method']!r} "
                              f"(registered: {', '.join(methods)})")
        if fixed_k(c["method"]) is not None:
            raise ConfigError(f"config key 'frontier.cells': method {c['method']!r} has a fixed K; the static line "
                              "is added for every scope")
        if c["scope"] == "per_layer" and config["cluster"]["layers"] != "all":
            raise ConfigError("config key 'frontier.cells': per_layer cells need cluster.layers: all "
                              "(per-layer centroids must cover every layer to mask the model)")
        bad = [m for m in config["predict"]["top_m"] if m > int(c["k"])]
        if bad:
            raise ConfigError(f"config key 'predict.top_m': {bad} exceed K={c['k']} of frontier cell {c}")
