"""Build a small fake results tree in exactly the workflow's on-disk formats.

Used by the tracking / summary / plot tests.  Values are deterministic (a seeded
RNG) so tests can compare what was logged or tabulated with the files.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import yaml

from apc.common.atomic import atomic_path, write_json, write_npy
from apc.common.config import resolve
from apc.perplexity.intervals import ppl_interval, ppl_of

ROOT = Path(__file__).resolve().parents[1]

MODEL = "fake/tiny-llm"
DATASET = "fake-wikitext"
MODES = ("centroid", "centroid_only", "random")


def build_fake_results(
    outdir: str | Path,
    *,
    projections: tuple[str, ...] = ("gate", "down_in"),
    scopes: tuple[str, ...] = ("per_layer", "pooled"),
    methods: dict[str, list[int]] | None = None,
    seeds: tuple[int, ...] = (0,),
    psets: dict[str, list[str]] | None = None,
    n_layers: int = 2,
    width: int = 16,
    history_iters: int = 3,
    rng_seed: int = 0,
) -> dict:
    """Write a fake results tree under ``outdir``; return a description of it.

    The description has ``config`` (the resolved config of this sweep, also written to
    ``config.json``), ``cells`` (list of (projection, scope, method, k, seed)),
    ``ppl_cells`` (list of (pset, scope, method, k, seed)), ``psets`` and ``n_layers``.
    """
    out = Path(outdir)
    methods = methods if methods is not None else {"apc": [2, 4], "static": [1]}
    psets = psets if psets is not None else {"paper": ["gate"], "down_in": ["down_in"]}
    rng = np.random.default_rng(rng_seed)
    layers = list(range(n_layers))

    write_json(out / "thresholds.json", {
        "sparsity": 0.5,
        "method": "percentile",
        "projections": {
            p: [{"layer": l, "threshold": round(0.1 + 0.2 * l + 0.01 * i, 4),
                 "achieved_sparsity": round(0.5 + 0.001 * l, 4)} for l in layers]
            for i, p in enumerate(projections)
        },
    })
    splits = {"train": (2, 4096), "test": (1, 2048)}
    for split, (n_windows, n_tokens) in splits.items():
        write_json(out / "patterns" / split / "extract.json", {
            "rule": "extract_patterns", "model": MODEL, "dataset": DATASET, "split": split,
            "n_tokens": n_tokens, "n_windows": n_windows, "seq_len": 2048,
            "projections": list(projections), "n_layers": n_layers,
            "wall_time_s": round(float(rng.uniform(1, 5)), 3),
            "store_bytes": n_tokens * n_layers * width // 8 * len(projections) + 128,
            "ideal_bytes": n_tokens * n_layers * width // 8 * len(projections),
            "density": {p: [round(float(rng.uniform(0.45, 0.55)), 4) for _ in layers] for p in projections},
        })

    cells: list[tuple] = []
    for proj in projections:
        for scope in scopes:
            for method, ks in methods.items():
                for k in ks:
                    for seed in seeds:
                        cells.append((proj, scope, method, k, seed))
                        _write_cell(out, rng, proj, scope, method, k, seed, layers, width, history_iters)

    write_json(out / "ppl" / "dense.json", {"mode": "dense", **_ppl_result(rng, 2.5), "model": MODEL,
                                            "dataset": DATASET})
    for pset, projs in psets.items():
        write_json(out / "ppl" / f"sparse-{pset}.json", {
            "mode": "sparse", **_ppl_result(rng, float(rng.uniform(2.6, 3.0))), "model": MODEL,
            "dataset": DATASET, "pset": pset, "projections": list(projs), "kept": {p: 0.5 for p in projs}})

    ppl_cells: list[tuple] = []
    for pset, projs in psets.items():
        for scope in scopes:
            for method, ks in methods.items():
                for k in ks:
                    for seed in seeds:
                        ppl_cells.append((pset, scope, method, k, seed))
                        modes = {}
                        for mode in MODES:
                            modes[mode] = {**_ppl_result(rng, float(rng.uniform(2.7, 6.0))),
                                           "kept": {p: round(float(rng.uniform(0.3, 0.7)), 4) for p in projs}}
                        write_json(out / "ppl" / pset / scope / f"{method}-k{k}-d0.6-s{seed}.json", {
                            "pset": pset, "projections": list(projs), "method": method, "k": k, "density": 0.6,
                            "scope": scope, "seed": seed, "model": MODEL, "dataset": DATASET,
                            "modes": modes})

    presets = yaml.safe_load((ROOT / "config.yaml").read_text())["presets"]
    config = resolve({"presets": presets, "preset": "smoke", "outdir": str(out), "cluster": {
        "projections": list(projections), "scopes": list(scopes), "methods": list(methods),
        "k": sorted({k for m, ks in methods.items() if m != "static" for k in ks}) or [1], "seeds": list(seeds)},
        "extract": {"projections": list(projections), "magnitudes": [p for p in ("down_in",) if p in projections]},
        "perplexity": {"psets": {k: list(v) for k, v in psets.items()}, "cells": "all"},
        "frontier": {"pset": {}}}, root=ROOT)
    write_json(out / "config.json", config)
    return {"config": config, "cells": cells, "ppl_cells": ppl_cells,
            "psets": dict(psets), "n_layers": n_layers, "projections": list(projections)}


def _ppl_result(rng, nll: float, windows: int = 4, tokens: int = 511) -> dict:
    """A perplexity result with per-token NLLs around ``nll`` nats (and their per-window sums)."""
    per_token = np.round(rng.normal(nll, 1.0, size=windows * tokens), 5)
    sums = [float(x) for x in per_token.reshape(windows, tokens).sum(axis=1)]
    t = [tokens] * windows
    lo, hi = ppl_interval(per_token)
    return {"ppl": ppl_of(sums, t), "ppl_lo": lo, "ppl_hi": hi, "nll": sum(sums) / sum(t), "tokens": sum(t),
            "windows": windows, "window_nll_sum": sums, "window_tokens": t, "block_tokens": 32,
            "units": windows * tokens // 32, "token_nll": per_token.tolist(), "started_at": 1.7e9,
            "finished_at": 1.7e9 + 5, "wall_time_s": round(float(rng.uniform(1, 4)), 3)}


def _write_cell(out, rng, proj, scope, method, k, seed, layers, width, history_iters, density=0.6):
    name = f"{method}-k{k}-d{density:g}-s{seed}"
    cdir = out / "clusters" / proj / scope / name
    n_sets = len(layers) if scope == "per_layer" else 1
    write_npy(cdir / "centroids.npy", (rng.random((n_sets, k, width)) < density).astype(np.uint8))
    history = []
    for s in range(n_sets):
        obj = float(rng.uniform(100, 200))
        for it in range(1, history_iters + 1):
            history.append({"set": s, "iteration": it, "objective": round(obj, 3),
                            "changed": max(0, 10 - 4 * it), "empty": 0})
            obj *= 0.9
    write_json(cdir / "centroids.json", {
        "method": method, "k": k, "scope": scope, "projection": proj, "layers": list(layers),
        "density": density, "seed": seed, "iterations": history_iters, "converged": True,
        "wall_time_s": round(float(rng.uniform(0.5, 2)), 3), "n_train_patterns": 4096 * len(layers),
        "target_density": density, "started_at": 1.7e9, "finished_at": 1.7e9 + 2,
        "width": width, "model": MODEL, "dataset": DATASET, "history": history})

    cols = ["split", "layer", "projection", "scope", "method", "k", "density", "seed", "n_tokens", "recall",
            "paper_precision", "precision", "f1", "centroid_density", "data_density",
            "compute_share", "random_recall"]
    rows = []
    for split, n_tok in (("train", 4096), ("test", 2048)):
        per_layer = []
        for layer in layers:
            recall = float(rng.uniform(0.6, 0.9)) if k > 1 else 0.6
            precision = float(rng.uniform(0.4, 0.6))
            per_layer.append((layer, recall, precision))
        for layer, recall, precision in [("all", float(np.mean([r for _, r, _ in per_layer])),
                                          float(np.mean([p for _, _, p in per_layer])))] + per_layer:
            f1 = 2 * recall * precision / (recall + precision)
            rows.append({"split": split, "layer": layer, "projection": proj, "scope": scope,
                         "method": method, "k": k, "density": density, "seed": seed, "n_tokens": n_tok,
                         "recall": recall, "paper_precision": recall, "precision": precision, "f1": f1,
                         "centroid_density": density, "data_density": 0.5, "compute_share": density,
                         "random_recall": density})
    path = out / "eval" / proj / scope / f"{name}.csv"
    with atomic_path(path, ".csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
