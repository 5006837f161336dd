"""The perplexity protocol of the study: which windows, which masks, what each result holds.

* Windows: the first ``test_tokens // seq_len`` windows of the test split (all when None).
* Cells are scored in batches, several per model load (:func:`score_cells`).
* References: ``dense`` (no hook) and ``sparse`` (true thresholded masks of a projection set).
* A cell: the projection set masked with one clustering cell's centroids per projection, in the
  modes ``centroid_only`` (the centroid mask alone), ``centroid`` (true mask AND centroid mask)
  and ``random`` (a same-density random mask; its density is the kept share measured in
  ``centroid_only`` when that mode runs, so the control matches the masks actually applied).

Every result keeps the per-window NLL sums and token counts, the per-token NLLs and a block-bootstrap
interval (:mod:`apc.perplexity.intervals`); a masked result scored against the dense reference
(:mod:`apc.perplexity.divergence`) also keeps, per token, its KL from dense and its top-1 agreement
with dense, and their means with intervals.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from apc.common.progress import get_logger, progress
from apc.extraction.corpus import check_budget
from apc.perplexity.divergence import reference_label
from apc.perplexity.intervals import BLOCK_TOKENS, fmt_interval, mean_interval, n_units, ppl_interval
from apc.perplexity.grouped import install_grouped, supports_grouped
from apc.perplexity.maskargs import Masks
from apc.perplexity.masking import install_interventions

#: How masked FFNs are computed: ``hooks`` (dense products, masks applied after) or ``grouped``
KERNELS = ("hooks", "grouped")
from apc.perplexity.scoring import score_windows

log = get_logger("apc.perplexity.protocol")

#: Cell modes in the order they run (``random`` reads the kept share of ``centroid_only``).
CELL_MODES = ("centroid_only", "centroid", "random")


def select_windows(windows: torch.Tensor, test_tokens: int | None, *, key: str = "perplexity.test_tokens",
                   split: str = "test") -> torch.Tensor:
    """The first ``test_tokens // seq_len`` rows of ``windows: (n_windows, seq_len)``; all if None."""
    if test_tokens is None:
        return windows
    seq_len = windows.shape[1]
    n = int(test_tokens) // seq_len
    if n < 1:
        raise ValueError(f"config key '{key}': {test_tokens} tokens is less than one window of {seq_len} tokens")
    check_budget(n, len(windows), seq_len, key=key, split=split)
    return windows[:n]


def token_figures(res: dict, block: int = BLOCK_TOKENS) -> dict:
    """The per-token lists a result keeps (rounded for JSON) and its figures with block-bootstrap
    intervals: ``ppl_lo, ppl_hi, block_tokens, units, token_nll`` and, scored against a dense
    reference, ``kl, kl_lo, kl_hi, top1, top1_lo, top1_hi, token_kl, token_top1`` (and ``kl_topk``
    where the top-k approximation was checked)."""
    out = {"block_tokens": int(block), "units": n_units(len(res["token_nll"]), block)}
    out["ppl_lo"], out["ppl_hi"] = ppl_interval(res["token_nll"], block=block)
    out["token_nll"] = [round(float(v), 5) for v in res["token_nll"]]
    if "token_kl" in res:
        kl, agree = np.asarray(res["token_kl"], np.float64), np.asarray(res["token_top1"], np.float64)
        out.update(kl=float(kl.mean()), top1=float(agree.mean()))
        out["kl_lo"], out["kl_hi"] = mean_interval(kl, block=block)
        out["top1_lo"], out["top1_hi"] = mean_interval(agree, block=block)
        out.update(token_kl=[round(float(v), 6) for v in kl], token_top1=[int(v) for v in agree])
    if "token_kl_topk" in res:  # the top-k approximation's KL beside the exact one (mean only)
        out["kl_topk"] = float(np.mean(res["token_kl_topk"]))
    return out


def score(model: nn.Module, windows: torch.Tensor, mode: str | Masks, *, bos: bool, projections=(), thresholds=None,
          seed: int = 0, detail: bool = False, kernel: str = "hooks", reference: dict | None = None,
          keep_reference: tuple[str, int] | None = None, block_tokens: int = BLOCK_TOKENS,
          check_top_k: int | None = None, batch_sizes=(), score_from: int = 1, **masks) -> dict:
    """Perplexity of ``model`` on ``windows`` under ``mode``'s masks (see :func:`install_interventions`).

    ``mode``: a mode name (its mask arguments as keywords, ``masks``) or a :class:`Masks`.
    ``score_from``: the first position whose token is scored (:func:`score_windows`).

    Returns ``ppl, ppl_lo, ppl_hi, nll, tokens, windows, window_nll_sum, window_tokens, kept,
    started_at, finished_at, wall_time_s`` and :func:`token_figures` (intervals over blocks of
    ``block_tokens`` scored tokens; NaN below 20 blocks); ``kept`` maps each masked projection to
    its kept share.  ``reference`` (the dense reference of these tokens) adds the divergence from
    dense, ``kl_reference`` naming it; ``keep_reference=(kind, top_k)`` returns this model's own
    reference rows under ``reference`` (the dense job writes them); ``check_top_k`` with an exact
    ``reference`` adds ``kl_topk``, the mean KL through the dense top-k plus one bucket, and
    ``kl_topk_k``, its k (the approximation's error on this result is ``kl - kl_topk``).
    ``detail`` adds ``layer_kept`` (``{proj: [kept share per layer]}``), ``input_kept`` (teal: the
    MLP input's, per layer), ``batch`` (the batch view, with ``batch_sizes`` among ``masks``) and
    ``id_counts`` (cluster modes: top-1 id counts per layer).  ``kernel="grouped"`` runs the cluster
    modes through the cluster-grouped FFN kernel (:mod:`apc.perplexity.grouped`); a mode it cannot
    run falls back to the hooks, with a log line.
    """
    started = time.time()
    t0 = time.perf_counter()
    if isinstance(mode, Masks):
        spec = mode
    else:
        masked = mode != "dense"
        spec = Masks(mode, projections=projections if masked else (), thresholds=thresholds if masked else None,
                     seed=seed, **masks)
    mode = spec.mode
    masked = mode != "dense"
    if kernel not in KERNELS:
        raise ValueError(f"unknown perplexity kernel {kernel!r}; expected one of {', '.join(KERNELS)}")
    reason = supports_grouped(mode, spec.projections, top_m=spec.top_m, groups=spec.groups,
                              assign_weights=spec.assign_weights) if kernel == "grouped" and masked else "-"
    if reason is None:
        install = install_grouped(model, mode, thresholds=spec.thresholds, centroids=spec.centroids,
                                  predictors=spec.predictors, skip_first_position=bos)
    else:
        if kernel == "grouped" and masked:
            log.info("mode %s runs through hooks, not the grouped kernel: %s", mode, reason)
        install = install_interventions(model, spec, skip_first_position=bos, batch_sizes=batch_sizes)
    with install as handle:
        res = score_windows(model, windows, bos=bos, reference=reference, keep_reference=keep_reference,
                            check_top_k=check_top_k if reference is not None and reference["kind"] == "exact" else None,
                            score_from=score_from)
    figures = token_figures(res, block_tokens)
    if "kl_topk" in figures:
        figures["kl_topk_k"] = int(check_top_k)
    out = {"ppl": res["ppl"], "ppl_lo": figures.pop("ppl_lo"), "ppl_hi": figures.pop("ppl_hi"),
           **{k: res[k] for k in ("nll", "tokens", "windows", "window_nll_sum", "window_tokens")},
           "kept": handle.kept_fraction() if masked else {},
           **({"kl_reference": reference_label(reference)} if reference is not None else {}), **figures,
           "started_at": started, "finished_at": time.time(), "wall_time_s": time.perf_counter() - t0}
    if keep_reference is not None:
        out["reference"] = res["reference"]
    if detail:
        layers = handle.layer_stats()
        out.update(layer_kept=layers["kept"], input_kept=layers["input_kept"], batch=handle.batch_view(),
                   id_counts=handle.id_counts(), **({"attn_kept": layers["attn_kept"]} if "attn_kept" in layers else {}))
    log.info("%s: ppl %s over %d tokens in %d windows (%d units)%s; kept %s", mode,
             fmt_interval(out["ppl"], out["ppl_lo"], out["ppl_hi"], "{:.3f}"), out["tokens"], out["windows"],
             out["units"], "" if "kl" not in out else
             f", KL {fmt_interval(out['kl'], out['kl_lo'], out['kl_hi'], '{:.4f}')} nats, top-1 "
             f"{fmt_interval(out['top1'], out['top1_lo'], out['top1_hi'], '{:.3f}')}",
             {k: round(v, 4) for k, v in out["kept"].items()})
    return out


def score_cell(model: nn.Module, windows: torch.Tensor, modes, *, bos: bool, projections, thresholds,
               centroids: dict[str, torch.Tensor], seed: int, groups: dict[str, int] | None = None,
               assign_weights: dict | None = None, kernel: str = "hooks", **scoring) -> dict[str, dict]:
    """Every requested cell mode, ``{mode: result of :func:`score`}``, in the order of ``modes``.

    ``scoring``: :func:`score`'s ``reference`` and ``block_tokens``.

    ``centroids: {proj: (n_sets, G*K, width) bool}`` (n_sets 1 for pooled, n_layers per layer;
    G = ``groups[proj]`` for a product cell, else 1).  ``assign_weights: {proj: None | (n_layers,
    width) scale}`` assigns a weighted cell's tokens by least missed weight in the centroid modes
    (see :func:`install_interventions`).
    """
    unknown = [m for m in modes if m not in CELL_MODES]
    if unknown:
        raise ValueError(f"unknown perplexity mode(s) {unknown}; known: {', '.join(CELL_MODES)}")
    groups = dict(groups or {})
    density = {q: float(c.double().mean()) * groups.get(q, 1) for q, c in centroids.items()}  # one mask's density
    source = "mean over centroids"
    results: dict[str, dict] = {}
    for mode in sorted(modes, key=CELL_MODES.index):
        if mode == "random":
            results[mode] = score(model, windows, mode, bos=bos, projections=projections, thresholds=thresholds,
                                  seed=seed, random_density=density, **scoring)
            results[mode].update(density=dict(density), density_source=source)
        else:
            results[mode] = score(model, windows, mode, bos=bos, projections=projections, thresholds=thresholds,
                                  seed=seed, centroids=centroids, groups=groups, assign_weights=assign_weights,
                                  kernel=kernel, **scoring)
        if mode == "centroid_only":
            density, source = dict(results[mode]["kept"]), "assigned centroids (centroid_only kept share)"
    return {m: results[m] for m in modes}


def score_cells(model: nn.Module, windows: torch.Tensor, modes, *, bos: bool, projections, thresholds,
                cells: Sequence[dict], kernel: str = "hooks", **scoring) -> list[dict[str, dict]]:
    """:func:`score_cell` for each of ``cells`` with one model: a batch of cells per model load.

    ``cells``: dicts of :func:`score_cell`'s per-cell arguments (``centroids``, ``seed`` and
    optionally ``groups``, ``assign_weights``).  Every cell sees the model as loaded: its hooks
    are removed before the next cell, so a cell's result does not depend on the batch it is in.
    """
    return [score_cell(model, windows, modes, bos=bos, projections=projections, thresholds=thresholds, kernel=kernel,
                       **scoring, **cell)
            for cell in progress(cells, desc="perplexity cells", unit="cell", disable=len(cells) < 2)]

