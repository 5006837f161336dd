"""The storage plan of a run: every store's bytes on disk, computed from the resolved config alone.

Each store is sized by one config key (a token budget or a sweep list), named beside it, so a
run that does not fit says which key to lower.  The plan is computed before any job runs (the
workflow prints it before the first job and stops when it exceeds the free space) and by
``python -m apc plan``.  Plain Python over the config and the few sidecars that exist: no model, no
Snakemake.

Sizes, with ``L`` layers, ``d`` the model width, ``f`` the FFN width, ``w`` a projection's width
(``f`` for gate, up and down_in, ``d`` for the down output) and ``n`` the rows kept per layer:

=================================  ==========================================  ==========================
store                              bytes                                       sized by
=================================  ==========================================  ==========================
model (converted or downloaded)    params x (4 for a GGUF conversion, else     ``model.params_b``
                                   the dtype's bytes); 0 for a local folder
tokens/{split}                     windows x seq_len x 8                       ``data.{split}_tokens``
patterns/{split}/{proj}            n x L x ceil(w / 8)                         ``store.patterns.{split}``
magnitudes/{split}/{proj}          n x L x w                                   ``store.magnitudes.{split}``
ffn_inputs/{split}                 n x L x d x 2                               ``store.ffn_inputs.{split}``
centroids                          per cell: sets x rows x ceil(w / 8)         ``cluster.k`` (the sweep)
predictors                         per layer: float32 parameters               ``frontier.cells``
ppl/dense-reference (KL)           r x (V x 4 + 8) exact; r x (8k + 12) top-k  ``perplexity.test_tokens``,
                                                                               ``frontier.test_tokens``
=================================  ==========================================  ==========================

``n`` is ``min(store.*.{split}, tokens of the split)``, and the split's tokens are its windows
times ``seq_len - 1`` (the BOS position is not stored).  ``r`` is the scored test tokens of the dense
reference (the larger of the perplexity and frontier budgets), ``V`` the vocabulary (the converted or
local model's ``config.json``, else ``model.shape.vocab``, else :data:`ASSUMED_VOCAB`) and ``k``
``perplexity.kl_top_k``.  A whole split (``data.*_tokens: null``)
counts the windows ``prepare_data`` found once it has run, else :data:`ASSUMED_SPLIT_TOKENS`.
The small files (thresholds, tables, perplexities, logs, MLflow) are not planned: kilobytes to a
few megabytes.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from apc.common.frontier import frontier_psets, neuron_matches, predictor_cells, reference_tokens
from apc.common.layout import Layout
from apc.common.methods import method_spec
from apc.common.sweep import cluster_cells

__all__ = ["ModelShape", "Store", "Plan", "storage_plan", "model_shape", "split_tokens", "free_bytes",
           "ASSUMED_SPLIT_TOKENS", "ASSUMED_VOCAB", "DEFAULT_SHAPE", "vocab_size", "reference_rows"]

#: Tokens assumed for a whole split (``null`` budget) until ``prepare_data`` has counted it.
ASSUMED_SPLIT_TOKENS = 1_000_000
#: Vocabulary assumed for the dense reference when neither the model's config.json nor ``model.shape.vocab`` says.
ASSUMED_VOCAB = 32_000
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
GB = 1e9


@dataclass(frozen=True)
class ModelShape:
    """Layers and widths of the model: ``d_model`` (residual) and ``d_ff`` (FFN neurons)."""

    n_layers: int
    d_model: int
    d_ff: int

    def width(self, proj: str) -> int:
        """Neurons of a stored projection: the down output is ``d_model`` wide, the rest ``d_ff``."""
        return self.d_model if proj == "down" else self.d_ff


#: Mistral-7B's shape, assumed when neither the manifest nor ``model.shape`` gives one.
DEFAULT_SHAPE = ModelShape(32, 4096, 14336)


@dataclass
class Store:
    """One store of the plan: ``name`` (its folder under the output folder), planned ``bytes``, the
    config ``key`` that sizes it, a human ``detail`` of the formula, and ``paths`` holding it."""

    name: str
    bytes: int
    key: str
    detail: str
    paths: list[str] = field(default_factory=list)

    def on_disk(self) -> int:
        """Bytes of this store's files that exist now (0 before its job)."""
        return sum(tree_bytes(Path(p)) for p in self.paths)


@dataclass
class Plan:
    """Every store of a run (:class:`Store`), and the folder whose free space must hold them."""

    stores: list[Store]
    outdir: str
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(s.bytes for s in self.stores)

    def still_needed(self) -> int:
        """Planned bytes not yet on disk (a resumed run needs only the rest)."""
        return sum(max(0, s.bytes - s.on_disk()) for s in self.stores)

    def largest(self) -> Store:
        return max(self.stores, key=lambda s: s.bytes)

    def table(self, free: int | None = None) -> str:
        """The plan as aligned text lines: one per store, the total and (if given) the free space."""
        rows = [(s.name, _gb(s.bytes), s.key, s.detail) for s in self.stores]
        w = [max(len(r[i]) for r in rows + [("store", "GB", "sized by", "")]) for i in range(3)]
        line = lambda a, b, c, d: f"  {a:<{w[0]}}  {b:>{w[1]}}  {c:<{w[2]}}  {d}".rstrip()  # noqa: E731
        out = [f"storage plan for {self.outdir}:", line("store", "GB", "sized by", "")]
        out += [line(*r) for r in rows]
        out.append(line("total", _gb(self.total), "", ""))
        if free is not None:
            out.append(f"  free in {_existing_parent(self.outdir)}: {_gb(free)} GB; "
                       f"still to write: {_gb(self.still_needed())} GB")
        out += [f"  note: {n}" for n in self.notes]
        return "\n".join(out)

    def check_fits(self, free: int) -> None:
        """``OSError`` with one line naming the largest store and its key when the rest does not fit."""
        need = self.still_needed()
        if need > free:
            big = self.largest()
            raise OSError(f"storage plan: the run needs {_gb(need)} GB more but {_existing_parent(self.outdir)} has "
                          f"{_gb(free)} GB free; the largest store, {big.name} ({_gb(big.bytes)} GB), is sized by "
                          f"config key '{big.key}'")


def _gb(n: int) -> str:
    return f"{n / GB:,.3f}" if n < 10 * GB else f"{n / GB:,.1f}"


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += (Path(root) / f).stat().st_size
            except OSError:
                pass
    return total


def _existing_parent(path: str | Path) -> Path:
    p = Path(path).absolute()
    while not p.exists():
        p = p.parent
    return p


def free_bytes(path: str | Path) -> int:
    """Free bytes on the file system that holds (or will hold) ``path``."""
    return shutil.disk_usage(_existing_parent(path)).free


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def model_shape(config: dict, manifest: dict | None = None) -> tuple[ModelShape, str]:
    """``(shape, where it came from)``: the manifest's, else ``model.shape``, else :data:`DEFAULT_SHAPE`."""
    if manifest and manifest.get("widths") and manifest.get("n_layers"):
        w = manifest["widths"]
        return ModelShape(int(manifest["n_layers"]), int(w.get("down", w.get("gate"))), int(w.get("down_in", w["gate"]))), \
            "the model's manifest"
    s = config["model"].get("shape")
    if s:
        return ModelShape(int(s["n_layers"]), int(s["d_model"]), int(s["d_ff"])), "config key 'model.shape'"
    return DEFAULT_SHAPE, "an assumed 7B shape (set 'model.shape' or run prepare_model)"


def split_tokens(config: dict, split: str, meta: dict | None = None) -> tuple[int, int, bool]:
    """``(windows, stored tokens, assumed)`` of a split: its windows times ``seq_len - 1`` (BOS dropped).

    ``meta`` is the split's ``tokens/{split}.json`` once ``prepare_data`` wrote it; ``assumed`` is True
    when a whole split's size is not known yet (:data:`ASSUMED_SPLIT_TOKENS`).
    """
    seq_len = int(config["data"]["seq_len"])
    budget = config["data"][f"{split}_tokens"]
    if meta and int(meta.get("seq_len", seq_len)) == seq_len and (
            budget is None or int(meta["n_windows"]) == max(1, budget // seq_len)):
        return int(meta["n_windows"]), int(meta["n_text_tokens"]), False
    if budget is None:
        windows = ASSUMED_SPLIT_TOKENS // seq_len
        return windows, windows * (seq_len - 1), True
    windows = max(1, int(budget) // seq_len)
    return windows, windows * (seq_len - 1), False


def vocab_size(config: dict, manifest: dict | None = None) -> tuple[int, str]:
    """``(vocabulary, where it came from)``: the loaded model's ``config.json`` (``vocab_size``, also under
    ``text_config``), else ``model.shape.vocab``, else :data:`ASSUMED_VOCAB`."""
    load = (manifest or {}).get("load_path")
    cfg = _read_json(Path(load) / "config.json") if load else None
    for c in (cfg, (cfg or {}).get("text_config")):
        if isinstance(c, dict) and c.get("vocab_size"):
            return int(c["vocab_size"]), "the model's config.json"
    v = (config["model"].get("shape") or {}).get("vocab")
    if v:
        return int(v), "config key 'model.shape.vocab'"
    return ASSUMED_VOCAB, f"an assumed vocabulary of {ASSUMED_VOCAB:,} (set 'model.shape.vocab' or run prepare_model)"


def reference_rows(config: dict, test_windows: int) -> tuple[int, str]:
    """``(scored tokens, sizing key)`` of the dense reference: the test windows of
    :func:`apc.common.frontier.reference_tokens` (all ``test_windows`` for a whole split), times ``seq_len - 1``."""
    seq_len = int(config["data"]["seq_len"])
    budget = reference_tokens(config)
    if budget is None:
        return test_windows * (seq_len - 1), "perplexity.test_tokens"
    key = "perplexity.test_tokens" if budget == config["perplexity"]["test_tokens"] else "frontier.test_tokens"
    return min(test_windows, max(1, int(budget) // seq_len)) * (seq_len - 1), key


def _cell_rows(config: dict, cell) -> int:
    """Centroid rows per set of a clustering cell: K, or G x K for a product cell."""
    base, opts = method_spec(cell.method, config["cluster"]["options"])
    return int(cell.k) * (int(opts.get("groups", 2)) if base == "apc_product" else 1)


def ffn_inputs_captured(config: dict) -> bool:
    """Whether the pattern extraction also writes the FFN-input stores: where a frontier is configured."""
    return bool(config["frontier"]["pset"])


def _predictor_params(config: dict, shape: ModelShape) -> tuple[int, list[str]]:
    """Float32 parameters of every predictor of the frontier (all layers) and their files' names."""
    p, d, f = config["predict"], shape.d_model, shape.d_ff
    total, names = 0, []
    for cell, kind in predictor_cells(config):
        k = int(cell.k)
        net = d * k + k if kind == "linear" else d * p["hidden"] + p["hidden"] + p["hidden"] * k + k
        total += shape.n_layers * (2 * d + net)
        names.append(f"{cell.key} {kind}")
    for match in neuron_matches(config):
        kind, k, factor = match.split("-")
        k, factor = int(k[1:]), int(factor[1:])
        flops = 2 * d * k if kind == "linear" else 2 * (d * p["hidden"] + p["hidden"] * k)
        rank = max(1, int(flops / (2 * (d + f)) + 0.5)) * factor
        for projs in frontier_psets(config).values():
            for q in projs:
                w = shape.width(q)
                total += shape.n_layers * (2 * d + d * rank + rank * w + w)
                names.append(f"neuron {q} {match}")
    return total, names


def storage_plan(config: dict, *, manifest: dict | None = None, tokens_meta: dict | None = None,
                 root: str | Path = ".") -> Plan:
    """The :class:`Plan` of a resolved config.

    ``manifest`` (``model/manifest.json``) and ``tokens_meta`` (``{split: tokens/{split}.json}``) are
    read from the output folder when not given; without them the shape comes from ``model.shape`` and
    whole splits are assumed (:func:`split_tokens`).  ``root`` anchors a relative ``model.name_or_path``.
    """
    out = config["outdir"]
    lay = Layout(out)
    if manifest is None:
        manifest = _read_json(Path(lay.manifest()))
    if tokens_meta is None:
        tokens_meta = {s: _read_json(Path(lay.tokens_meta(s))) for s in ("train", "test")}
    shape, shape_from = model_shape(config, manifest)
    L = shape.n_layers
    plan = Plan([], out, [f"model shape {L} layers, d_model {shape.d_model}, d_ff {shape.d_ff}, from {shape_from}"])
    st, ex = config["store"], config["extract"]

    m = config["model"]
    name = m["name_or_path"]
    local = not name.startswith("embedded:") and (name.startswith(("/", "./", "../", "~"))
                                                  or (Path(root) / name).exists())
    params = (manifest or {}).get("n_params") or (m.get("params_b") or 7.0) * 1e9
    if m.get("gguf_file") or name.startswith("embedded:"):
        plan.stores.append(Store("model (float32 conversion)", int(params * 4), "model.params_b",
                                 f"{params / 1e9:.3g}B params x 4 B, in {m['cache_dir']}", [m["cache_dir"]]))
    elif not local:
        plan.stores.append(Store("model (hub download)", int(params * _DTYPE_BYTES[m["dtype"]]), "model.params_b",
                                 f"{params / 1e9:.3g}B params x {_DTYPE_BYTES[m['dtype']]} B, in {m['cache_dir']}/hub",
                                 [str(Path(m["cache_dir"]) / "hub")]))

    splits, split_windows = {}, {}
    for split in ("train", "test"):
        windows, n, assumed = split_tokens(config, split, (tokens_meta or {}).get(split))
        splits[split], split_windows[split] = n, windows
        if assumed:
            plan.notes.append(f"the whole {split} split is assumed to hold {ASSUMED_SPLIT_TOKENS:,} tokens until "
                              f"prepare_data has counted it (data.{split}_tokens: null)")
        plan.stores.append(Store(f"tokens/{split}", windows * int(config["data"]["seq_len"]) * 8,
                                 f"data.{split}_tokens", f"{windows:,} windows x {config['data']['seq_len']} x 8 B",
                                 [lay.tokens(split)]))

    def rows(kind: str, split: str) -> tuple[int, str]:
        cap = st[kind][split]
        n = splits[split] if cap is None else min(int(cap), splits[split])
        return n, (f"data.{split}_tokens" if cap is None or cap >= splits[split] else f"store.{kind}.{split}")

    for split in ("train", "test"):
        n, key = rows("patterns", split)
        for q in ex["projections"]:
            row = (shape.width(q) + 7) // 8
            plan.stores.append(Store(f"patterns/{split}/{q}", n * L * row, key, f"{n:,} tokens x {L} layers x {row} B",
                                     [str(Path(lay.patterns(split)) / q / f"L{l:02d}.npy") for l in range(L)]))
        n, key = rows("magnitudes", split)
        for q in ex.get("magnitudes") or []:
            w = shape.width(q)
            plan.stores.append(Store(f"magnitudes/{split}/{q}", n * L * w, key, f"{n:,} tokens x {L} layers x {w} B",
                                     [str(Path(lay.patterns(split)) / q / "magnitudes")]))
    pred_params, pred_names = _predictor_params(config, shape) if config["frontier"]["pset"] else (0, [])
    if ffn_inputs_captured(config):  # the predictors' and the frontier calibration's inputs
        for split in ("train", "test"):
            n, key = rows("ffn_inputs", split)
            plan.stores.append(Store(f"ffn_inputs/{split}", n * L * shape.d_model * 2, key,
                                     f"{n:,} tokens x {L} layers x {shape.d_model} x 2 B", [lay.ffn_inputs(split)]))

    cells = cluster_cells(config)
    total, paths = 0, []
    for cell in cells:
        per = _cell_rows(config, cell)
        layers = L if config["cluster"]["layers"] == "all" else len(config["cluster"]["layers"])
        sets = layers if cell.scope == "per_layer" else 1
        total += sets * per * ((shape.width(cell.proj) + 7) // 8)
        paths.append(lay.centroids(cell))
    plan.stores.append(Store("centroids", total, "cluster.k",
                             f"{len(cells)} cells: sets x K x ceil(width / 8) B", paths))
    if pred_params:
        plan.stores.append(Store("predictors", 4 * pred_params, "frontier.cells",
                                 f"{pred_params / 1e6:,.1f}M float32 parameters", [str(Path(out) / "predictors")]
                                 + [str(Path(lay.cell_dir(c)) / f"predictor-{k}.safetensors")
                                    for c, k in _predictor_cells(config)]))
    ppl = config["perplexity"]
    if ppl.get("kl_reference"):  # the dense next-token log-probabilities the KL is measured against
        r, key = reference_rows(config, split_windows["test"])
        if ppl["kl_reference"] == "exact":
            vocab, vocab_from = vocab_size(config, manifest)
            size, how = r * (vocab * 4 + 8), f"{r:,} tokens x ({vocab:,} x 4 + 8) B, exact"
            if not vocab_from.startswith("the model"):
                plan.notes.append(f"the dense reference's vocabulary is from {vocab_from}")
        else:
            k = int(ppl["kl_top_k"])
            size, how = r * (8 * k + 12), f"{r:,} tokens x ({k + 1} x 4 + {k} x 4 + 8) B, top-{k}"
        plan.stores.append(Store("ppl/dense-reference", size, key, how, [lay.ppl_reference()]))
    return plan


def _predictor_cells(config: dict):
    return predictor_cells(config)
