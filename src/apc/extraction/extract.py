"""Calibrate thresholds and extract bit-packed activation patterns, one forward pass per window.

Only torch, numpy and the project's torch/numpy modules are used; the model is
any ``nn.Module`` whose FFN the layout table knows (:mod:`apc.common.families`).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from apc.extraction.capture import ProjectionCapture
from apc.extraction.magnitudes import MagnitudeWriter, magnitude_path
from apc.extraction.patterns import PatternWriter, pattern_path
from apc.common.progress import get_logger, progress
from apc.common.rowstore import sample_rows
from apc.extraction.thresholds import (ZERO_THRESHOLD, AbsQuantileHistogram, kept_share_tables, load_histograms,
                                      save_histograms, threshold_table)

log = get_logger("apc.extraction.extract")


def decoder_body(model: nn.Module) -> nn.Module:
    """The model without its LM head (a Hugging Face ``base_model``), or ``model`` itself where it has none.

    A capture pass needs the FFN tensors, not the logits: the head is a fifth of the
    FLOPs of a small model with a large vocabulary, and skipping it changes no layer's output.
    """
    body = getattr(model, "base_model", None)
    return body if isinstance(body, nn.Module) else model


def forward_windows(model: nn.Module, windows: torch.Tensor, device: str, desc: str) -> float:
    """Run ``windows: (n_windows, seq_len) int64`` through ``model``'s decoder one at a time; return seconds."""
    body = decoder_body(model)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for w in progress(windows, desc=desc, unit="window"):
            body(w.unsqueeze(0).to(device))
    return time.perf_counter() - t0


def collect_histograms(
    model: nn.Module, windows: torch.Tensor, projections: list[str], *, bits: int, skip_first: bool, device: str
) -> tuple[dict[tuple[str, int], AbsQuantileHistogram], int, float]:
    """One pass over ``windows``: ``({(projection, layer): histogram of |x|}, n_tokens, seconds)``."""
    hists: dict[tuple[str, int], AbsQuantileHistogram] = {}

    def collect(proj: str, layer: int, x: torch.Tensor) -> None:
        h = hists.get((proj, layer))
        if h is None:
            h = hists[(proj, layer)] = AbsQuantileHistogram(bits)
        h.update(x)

    with ProjectionCapture(model, projections, collect, skip_first=skip_first):
        wall = forward_windows(model, windows, device, "calibrating thresholds")
    n_tokens = int(windows.shape[0] * (windows.shape[1] - (1 if skip_first else 0)))  # an expert sees fewer
    return hists, n_tokens, wall


def _method(bits: int) -> str:
    return f"exact float32-bit histogram of |x|, {bits} mantissa bits (edges {2.0**-bits:.2%} apart)"


def calibrate_thresholds(
    model: nn.Module,
    windows: torch.Tensor,
    projections: list[str],
    sparsity: float,
    *,
    bits: int = 10,
    skip_first: bool,
    device: str = "cpu",
    histograms_path: str | Path | None = None,
) -> dict:
    """Per-(layer, projection) thresholds T with ``P(|x| < T) ≈ sparsity`` over the windows.

    ``windows: (n_windows, seq_len) int64``.  Returns ``{"sparsity", "method",
    "projections": {proj: [{layer, threshold, achieved_sparsity}]}, "n_tokens", "wall_time_s"}``.
    With ``histograms_path`` the histograms are also saved there (:func:`save_histograms`), so
    other quantiles (the kept shares of :func:`kept_shares_from_histograms`) need no second pass.
    """
    hists, n_tokens, wall = collect_histograms(model, windows, projections, bits=bits, skip_first=skip_first,
                                               device=device)
    table = threshold_table(hists, sparsity)
    worst = max(abs(r["achieved_sparsity"] - sparsity) for rows in table.values() for r in rows)
    log.info("thresholds for %d (layer, projection) pairs from %d tokens; worst |achieved - target| = %.2e",
             len(hists), n_tokens, worst)
    if histograms_path is not None:
        save_histograms(histograms_path, hists, n_tokens)
    return {"sparsity": sparsity, "method": _method(bits), "n_tokens": n_tokens, "wall_time_s": wall,
            "projections": table}


def kept_shares_from_histograms(path: str | Path, projections: list[str], kept_shares: list[float]) -> dict:
    """:func:`calibrate_kept_shares` from the histograms :func:`calibrate_thresholds` saved: same result, no pass."""
    hists, n_tokens = load_histograms(path, projections)
    bits = 23 - next(iter(hists.values())).shift
    return {"method": _method(bits), "n_tokens": n_tokens, "wall_time_s": 0.0,
            "shares": kept_share_tables(hists, list(kept_shares))}


def calibrate_kept_shares(
    model: nn.Module,
    windows: torch.Tensor,
    projections: list[str],
    kept_shares: list[float],
    *,
    bits: int = 10,
    skip_first: bool,
    device: str = "cpu",
) -> dict:
    """Thresholds ``T_rho`` with ``P(|x| >= T_rho) ≈ rho`` for every kept share rho, from one pass.

    Returns ``{"method", "n_tokens", "wall_time_s", "shares": [{"kept_share": rho,
    "projections": {proj: [{layer, threshold, achieved_sparsity}]}}]}`` (kept = 1 - achieved_sparsity).
    """
    hists, n_tokens, wall = collect_histograms(model, windows, projections, bits=bits, skip_first=skip_first,
                                               device=device)
    return {"method": _method(bits), "n_tokens": n_tokens, "wall_time_s": wall,
            "shares": kept_share_tables(hists, list(kept_shares))}


def extract_patterns(
    model: nn.Module,
    windows: torch.Tensor,
    thresholds: dict,
    projections: list[str],
    root: str | Path,
    split: str,
    meta: dict,
    *,
    skip_first: bool,
    device: str = "cpu",
    magnitudes: list[str] = (),
    pattern_tokens: int | None = None,
    magnitude_tokens: int | None = None,
    sample_seed: int = 0,
) -> dict:
    """Write bit-packed patterns ``|x| >= T`` (compared in float32) for every (layer, projection) of ``split`` under ``root``.

    ``windows: (n_windows, seq_len) int64``; ``thresholds`` is the dict from
    :func:`calibrate_thresholds`.  For the projections in ``magnitudes`` (a
    subset of ``projections``), ``|x|`` is also stored as 8-bit codes
    (:mod:`apc.magnitudes`, same rows as the patterns).  Files are filled
    window by window and renamed into place only when complete.  Returns a
    summary dict (tokens, densities, store sizes, wall time).  For a mixture of experts the
    router's choice is stored too, and the summary's ``moe`` block reports the share of experts
    active beside the neuron density inside them (:mod:`apc.extraction.routing`).
    ``pattern_tokens`` / ``magnitude_tokens`` keep a seeded token sample of that many tokens per
    layer (the same tokens in every layer, magnitudes a subset of the patterns' rows;
    :func:`apc.common.rowstore.sample_rows` with ``sample_seed``); None keeps every token.
    """
    from apc.common.sites import ffn_sites
    from apc.extraction.routing import RoutingWriter, moe_summary, routing_path

    sites = ffn_sites(model)
    experts = sites[0] if sites[0].expert is not None else None
    magnitudes = list(magnitudes)
    extra = [p for p in magnitudes if p not in projections]
    if extra:
        raise ValueError(f"magnitudes: projections {extra} are not extracted (projections: {list(projections)})")
    table = {p: {r["layer"]: r["threshold"] for r in thresholds["projections"][p]} for p in projections}
    n_layers = len(table[projections[0]])
    n_windows, seq_len = windows.shape
    n_tokens = n_windows * (seq_len - (1 if skip_first else 0))
    if magnitudes and pattern_tokens is not None and (magnitude_tokens is None or magnitude_tokens > pattern_tokens):
        if min(n_tokens, magnitude_tokens or n_tokens) > pattern_tokens:
            raise ValueError(f"config key 'store.magnitudes.{split}': {magnitude_tokens} magnitude rows exceed the "
                             f"{pattern_tokens} pattern rows of 'store.patterns.{split}' (they are a subset)")
    pattern_sample = (sample_rows(n_tokens, pattern_tokens, sample_seed), sample_seed)
    magnitude_sample = (sample_rows(n_tokens, magnitude_tokens, sample_seed), sample_seed)
    writers: dict[tuple[str, int], PatternWriter] = {}
    mag_writers: dict[tuple[str, int], MagnitudeWriter] = {}
    # float32 on both sides, as in calibration and the perplexity hooks: a bf16 comparison would round T.
    t_dev = {k: {l: torch.tensor(t, dtype=torch.float32, device=device) for l, t in v.items()}
             for k, v in table.items()}

    def write(proj: str, layer: int, x: torch.Tensor) -> None:
        w = writers.get((proj, layer))
        if w is None:
            w = writers[(proj, layer)] = PatternWriter(
                pattern_path(root, split, proj, layer), n_tokens, x.shape[-1],
                {**meta, "split": split, "layer": layer, "projection": proj, "threshold": table[proj][layer]},
                sample=pattern_sample,
            )
        w.append(x.float().abs() >= t_dev[proj][layer])
        if proj in magnitudes:
            mw = mag_writers.get((proj, layer))
            if mw is None:
                mw = mag_writers[(proj, layer)] = MagnitudeWriter(
                    magnitude_path(root, split, proj, layer), n_tokens, x.shape[-1],
                    {**meta, "split": split, "layer": layer, "projection": proj},
                    reference=table[proj][layer] if table[proj][layer] > ZERO_THRESHOLD else 1.0, sample=magnitude_sample,
                )
            mw.append(x)

    routers: dict[int, RoutingWriter] = {}

    def route(layer: int, idx: torch.Tensor) -> None:
        if layer not in routers:
            routers[layer] = RoutingWriter(routing_path(root, split, layer), n_tokens, idx.shape[-1],
                                           experts.n_experts, {**meta, "split": split, "layer": layer})
        routers[layer].append(idx)

    # an expert's store keeps the rows routed to it
    close = (lambda w: w.close_written()) if experts is not None else (lambda w: w.close())
    try:
        with ProjectionCapture(model, projections, write, skip_first=skip_first,
                               routing=route if experts is not None else None):
            wall = forward_windows(model, windows, device, f"extracting {split} patterns")
        sidecars = {k: close(w) for k, w in writers.items()}
        mag_sidecars = {k: close(w) for k, w in mag_writers.items()}
        routing = {l: w.close() for l, w in routers.items()}
    except BaseException:
        for w in [*writers.values(), *mag_writers.values(), *routers.values()]:
            w.abort()
        raise
    density = {p: [sidecars[(p, l)]["density"] for l in range(n_layers)] for p in projections}
    store = sum(pattern_path(root, split, p, l).stat().st_size for p, l in sidecars)
    ideal = sum(s["n_tokens"] * s["width"] / 8 for s in sidecars.values())
    # rows per site: the sampled tokens (store.patterns); an expert's routed rows are its own
    stored = n_tokens if experts is not None else next(iter(writers.values())).n_tokens
    mag_store = sum(magnitude_path(root, split, p, l).stat().st_size for p, l in mag_sidecars)
    clipped = sum(s["clipped"] for s in mag_sidecars.values())
    if clipped:
        log.warning("%s: %d magnitudes above the 8-bit code range were clipped", split, clipped)
    log.info("%s: %d of %d tokens x %d layers x %d projections in %.1f s; store %.1f MB (%.3fx the n*d/8 ideal)",
             split, stored, n_tokens, n_layers, len(projections), wall, store / 1e6, store / ideal)
    return {
        "split": split,
        "n_tokens": stored,
        **({"n_split_tokens": n_tokens} if stored != n_tokens else {}),
        **({"magnitude_tokens": len(magnitude_sample[0])} if mag_writers and magnitude_sample[0] is not None else {}),
        "n_windows": int(n_windows),
        "seq_len": int(seq_len),
        "projections": list(projections),
        "n_layers": n_layers,
        "wall_time_s": wall,
        "store_bytes": int(store),
        "ideal_bytes": int(ideal),
        "density": density,
        "magnitude_projections": magnitudes,
        "magnitude_bytes": int(mag_store),
        "magnitude_clipped": int(clipped),
        **({"moe": moe_summary(routing, density, experts.n_experts, experts.top_k)} if experts is not None else {}),
    }
