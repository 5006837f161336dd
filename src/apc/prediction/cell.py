"""Fit and evaluate predictors layer by layer from the FFN-input and pattern stores.

Train on the ``train`` split, report on ``test``.  Row t of both stores is the same
token; a disagreement in token counts is an error.  Cluster labels are the oracle
ids: the nearest centroid of each train pattern by the activation-aware distance.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..clustering.data import PackedPatterns
from ..clustering.io import centroid_paths, load_centroids
from ..extraction.ffn_inputs import FfnInputReader, ffn_input_path
from ..evaluation.metrics import coverage_sums
from ..extraction.patterns import PatternReader, pattern_path
from ..common.progress import get_logger
from .evaluate import evaluate_cluster_predictor, evaluate_neuron_predictor
from .fit import fit_cluster_predictor, fit_neuron_predictor

log = get_logger("apc.prediction")


def stored_layers(ffn_root: str | Path, split: str = "train") -> list[int]:
    """Layer indices with an FFN-input file for ``split``."""
    files = sorted((Path(ffn_root) / split).glob("L*.npy"))
    if not files:
        raise FileNotFoundError(f"no FFN-input files in {Path(ffn_root) / split}")
    return [int(f.stem[1:]) for f in files]


def layer_data(ffn_root, pattern_root, split: str, projection: str, layer: int,
               max_tokens: int | None = None, seed: int = 0) -> tuple[np.ndarray, PackedPatterns]:
    """``(inputs (n, d_model) float16, patterns)`` of one layer; a seeded row sample if ``max_tokens``.

    The tokens are those of the FFN-input store (all of the split, or its ``store.ffn_inputs`` sample),
    with the pattern rows of the same tokens.
    """
    inputs = FfnInputReader(ffn_input_path(ffn_root, split, layer))
    reader = PatternReader(pattern_path(pattern_root, split, projection, layer))
    at = reader.locate(inputs)  # pattern rows of the inputs' tokens (None: the same rows)
    if max_tokens is None or max_tokens >= inputs.n_tokens:
        if at is None:
            return inputs.rows(), PackedPatterns.from_readers([reader])
        return inputs.rows(), PackedPatterns([reader.packed(at)], reader.width, sources=[str(reader.path)])
    idx = np.sort(np.random.default_rng(seed).choice(inputs.n_tokens, size=int(max_tokens), replace=False))
    rows = idx if at is None else at[idx]
    return inputs.rows(idx), PackedPatterns([reader.packed(rows)], reader.width, sources=[str(reader.path)])


def cell_centroids(path, layers: Sequence[int]) -> tuple[dict[int, torch.Tensor], dict]:
    """``({layer: (K, W) bool centroids}, sidecar)`` from a centroid file of a cell.

    One set serves every layer (pooled scope); otherwise set i belongs to
    ``meta["layers"][i]`` (layer i when absent).  A layer without a set is an error.
    """
    array, sidecar = centroid_paths(path)
    if not array.exists() or not sidecar.exists():
        raise FileNotFoundError(f"the predictor's cell has no centroids: missing {array if not array.exists() else sidecar}")
    bits, meta = load_centroids(path)
    if bits.shape[0] == 1 and meta.get("scope") != "per_layer":
        return {l: torch.from_numpy(bits[0]) for l in layers}, meta
    owners = list(meta.get("layers", range(bits.shape[0])))
    missing = [l for l in layers if l not in owners]
    if missing:
        raise ValueError(f"{array}: no centroid set for layers {missing} (sets cover layers {owners})")
    return {l: torch.from_numpy(bits[owners.index(l)]) for l in layers}, meta


def train_cluster_cell(
    ffn_root, pattern_root, centroids_path, projection: str, *, kind: str = "linear", hidden: int = 256,
    top_m: Sequence[int] = (1,), seed: int = 0, device: str = "auto", max_train_tokens: int | None = None,
    fit: dict | None = None, chunk_size: int = 4096, layers: Sequence[int] | None = None,
) -> tuple[list, dict]:
    """Fit one cluster predictor per layer for a cell's centroids; evaluate it on test.

    Returns ``(predictors in layer order, report)`` with ``report["layers"]`` one dict per
    layer: ``layer, n_train, fit_seconds, loss, train_oracle, test`` (see
    :func:`evaluate_cluster_predictor`).
    """
    layers = stored_layers(ffn_root) if layers is None else list(layers)
    cents, meta = cell_centroids(centroids_path, layers)
    predictors, rows = [], []
    for l in layers:
        x, pats = layer_data(ffn_root, pattern_root, "train", projection, l, max_train_tokens, seed + l)
        c = cents[l]
        sums, labels = coverage_sums(pats, c, device=device, return_assignments=True)
        t0 = time.perf_counter()
        pred, loss = fit_cluster_predictor(x, labels, c.shape[0], kind=kind, hidden=hidden, seed=seed + l,
                                           device=device, **(fit or {}))
        secs = time.perf_counter() - t0
        tx, tp = layer_data(ffn_root, pattern_root, "test", projection, l)
        test = evaluate_cluster_predictor(pred, tx, tp, c, top_m=top_m, chunk_size=chunk_size, device=device)
        predictors.append(pred)
        rows.append({"layer": l, "n_train": int(len(x)), "fit_seconds": secs, "loss": loss,
                     "train_oracle_recall": sums.hits / max(1, sums.active), "test": test})
        log.info("%s L%02d %s K=%d: top-1 accuracy %.3f, recall %.3f (oracle %.3f), fit %.1f s",
                 projection, l, kind, c.shape[0], test["masks"][0]["accuracy"], test["masks"][0]["recall"],
                 test["oracle"]["recall"], secs)
    report = {"projection": projection, "kind": kind, "seed": seed, "layers_fitted": layers,
              "centroids": {k: meta.get(k) for k in ("method", "k", "scope", "seed", "density")},
              "config": predictors[0].config(), "layers": rows}
    return predictors, report


def train_neuron_cell(
    ffn_root, pattern_root, projection: str, rank: int, *, densities: Sequence[float], seed: int = 0,
    device: str = "auto", max_train_tokens: int | None = None, fit: dict | None = None, chunk_size: int = 4096,
    layers: Sequence[int] | None = None,
) -> tuple[list, dict]:
    """Fit one rank-``rank`` neuron predictor per layer on the train patterns; evaluate top-k masks on test.

    Returns ``(predictors in layer order, report)`` with one dict per layer as in
    :func:`train_cluster_cell` (``test`` from :func:`evaluate_neuron_predictor`).
    """
    layers = stored_layers(ffn_root) if layers is None else list(layers)
    predictors, rows = [], []
    for l in layers:
        x, pats = layer_data(ffn_root, pattern_root, "train", projection, l, max_train_tokens, seed + l)
        t0 = time.perf_counter()
        pred, loss = fit_neuron_predictor(x, pats, rank, seed=seed + l, device=device, **(fit or {}))
        secs = time.perf_counter() - t0
        tx, tp = layer_data(ffn_root, pattern_root, "test", projection, l)
        test = evaluate_neuron_predictor(pred, tx, tp, densities, chunk_size=chunk_size, device=device)
        predictors.append(pred)
        rows.append({"layer": l, "n_train": int(len(x)), "fit_seconds": secs, "loss": loss, "test": test})
        log.info("%s L%02d neuron r=%d: recall %s, fit %.1f s", projection, l, rank,
                 [round(r["recall"], 3) for r in test["masks"]], secs)
    report = {"projection": projection, "kind": "neuron", "seed": seed, "layers_fitted": layers,
              "config": predictors[0].config(), "layers": rows}
    return predictors, report
