"""``extract.threshold: zero``: a neuron is active when it is exactly non-zero.

A ReLU model (OPT) has exact zeros after its activation, so its true sparsity
needs no threshold.  Patterns and masks keep the rule ``|x| >= T`` of every other
stage with ``T = ZERO_THRESHOLD``, the smallest positive float32, which in
float32 is the same test as ``x != 0``.  :func:`natural_thresholds` measures, in
one pass, the share of exact zeros per (projection, site): the natural sparsity
that this gives, reported as ``achieved_sparsity``.  Only torch and numpy are used.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from apc.common.progress import get_logger
from apc.extraction.capture import ProjectionCapture
from apc.extraction.extract import forward_windows
from apc.extraction.thresholds import ZERO_THRESHOLD, AbsQuantileHistogram, save_histograms

log = get_logger("apc.extraction.natural")

#: ``extract.threshold`` values: the sparsity quantile of |x| per site, or exact zeros.
THRESHOLD_RULES = ("quantile", "zero")


def natural_thresholds(
    model: nn.Module,
    windows: torch.Tensor,
    projections: list[str],
    *,
    bits: int = 10,
    skip_first: bool,
    device: str = "cpu",
    histograms_path: str | Path | None = None,
) -> dict:
    """Thresholds ``ZERO_THRESHOLD`` and the natural sparsity per (projection, site) from one pass.

    ``windows: (n_windows, seq_len) int64``.  Returns the dict of
    :func:`apc.extraction.extract.calibrate_thresholds` (``sparsity`` is ``"zero"``), its
    ``achieved_sparsity`` the share of exact zeros; with ``histograms_path`` the |x|
    histograms are saved too, for the kept-share thresholds.
    """
    hists: dict[tuple[str, int], AbsQuantileHistogram] = {}
    zeros: dict[tuple[str, int], int] = {}

    def collect(proj: str, site: int, x: torch.Tensor) -> None:
        key = (proj, site)
        if key not in hists:
            hists[key], zeros[key] = AbsQuantileHistogram(bits), 0
        hists[key].update(x)
        zeros[key] += int((x == 0).sum())

    with ProjectionCapture(model, projections, collect, skip_first=skip_first):
        wall = forward_windows(model, windows, device, "measuring natural sparsity")
    n_tokens = int(windows.shape[0] * (windows.shape[1] - (1 if skip_first else 0)))
    table: dict[str, list[dict]] = {}
    for proj, site in sorted(hists):
        n = hists[(proj, site)].n
        share = zeros[(proj, site)] / n if n else float("nan")
        table.setdefault(proj, []).append({"layer": site, "threshold": ZERO_THRESHOLD, "achieved_sparsity": share})
    for proj, rows in table.items():
        log.info("natural sparsity of %s per site: %s", proj, " ".join(f"{r['achieved_sparsity']:.3f}" for r in rows))
    if histograms_path is not None:
        save_histograms(histograms_path, hists, n_tokens)
    return {"sparsity": "zero", "method": "exact zeros: active = x != 0 (threshold: the smallest positive float32)",
            "n_tokens": n_tokens, "wall_time_s": wall, "projections": table}
