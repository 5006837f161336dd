"""Score one point of the compute-quality frontier (:mod:`apc.common.frontier`).

A point records, per layer, the share of each matrix product's multiply-adds that its method
really runs on the scored tokens (:mod:`apc.perplexity.accounting`), and the predictor's FLOPs
share (summed over projections: each projection's predictor runs in every layer).  LaRoSA's
rotation of the MLP input is not folded into the previous layer here: its ``d_model²``
multiply-adds per token and layer are counted (``rotation_flops_share``).
``compute_share`` is their FLOP-weighted total; ``kept_share`` the mean kept share of the masks.
With ``batch_sizes`` the point also carries the batch view (:func:`apc.perplexity.masking.install_interventions`).
A GRIFFIN point scores only the tokens after each window's prompt, and carries dense on the same
tokens (``dense``) for its ratio.
"""

from __future__ import annotations

import torch
from torch import nn

from dataclasses import dataclass, fields, replace

from apc.lines import LineSpec, parse
from apc.perplexity.accounting import ffn_share, model_share, product_shares, product_weights
from apc.perplexity.generation import (Prefill, Prompts, columns, decode_samples, dense_prefill, generation_point,
                                      load_prefill, read_dense, sample_indices)
from apc.perplexity.maskargs import Masks
from apc.perplexity.masking import install_interventions
from apc.perplexity.protocol import score

_MASK_FIELDS = {f.name for f in fields(Masks)}


def line_masks(spec: LineSpec, share: float, *, projections, thresholds: dict, seed: int = 0, **arrays) -> Masks:
    """The :class:`Masks` of line ``spec`` at kept share ``share``: the line's share-derived fields
    (:meth:`apc.lines.Line.share_arrays`) and ``arrays`` (what :meth:`apc.lines.Line.arrays` read from its files;
    keys that are not :class:`Masks` fields go to ``Masks.arrays``, the line's own)."""
    projections = tuple(projections)
    arrays = {**{k: v for k, v in arrays.items() if v is not None},
              **spec.impl.share_arrays(spec, share, projections=projections)}
    kw = {k: v for k, v in arrays.items() if k in _MASK_FIELDS}
    own = {k: v for k, v in arrays.items() if k not in _MASK_FIELDS}
    return Masks(spec.mode, projections=projections, thresholds=thresholds, seed=seed, line=spec,
                 **({"arrays": own} if own else {}), **kw)


@dataclass(frozen=True)
class GenerationInputs:
    """What every point's generation agreement compares against (:mod:`apc.perplexity.generation`): the
    ``prompts``, dense's continuations ``dense: (n_prompts, new_tokens)`` int64, and dense's prefill of them
    (:func:`apc.perplexity.generation.dense_prefill`, reused by every point of a job; None: none)."""

    prompts: Prompts
    dense: torch.Tensor
    prefilled: Prefill | None = None


def job_generation(inputs, model: nn.Module, tokenizer) -> GenerationInputs | None:
    """The generation inputs of a frontier job: the prompts and dense continuations of its ``generation`` input
    file (:func:`apc.perplexity.generation.dense_record`), with dense's prefill of them (its
    ``generation_prefill`` file, :func:`apc.perplexity.generation.save_prefill`, else computed here); None
    without the file."""
    if "generation" not in inputs.keys():
        return None
    from apc.common.atomic import read_json

    try:
        prompts, dense = read_dense(read_json(inputs.generation))
    except ValueError as err:
        raise ValueError(f"{inputs.generation}: {err}; rerun generation_dense") from None
    if "generation_prefill" in inputs.keys():
        prefill = load_prefill(inputs.generation_prefill, prompts, model)
    else:
        prefill = dense_prefill(model, prompts)
    return GenerationInputs(prompts, dense, prefill)


def add_samples(result: dict, gen: GenerationInputs | None, tokenizer, name: str, log=None, k: int = 3) -> None:
    """Put the decoded text of ``k`` seeded prompts and of dense's and this point's continuations of them into
    ``result["generation"]["samples"]`` (:func:`apc.perplexity.generation.decode_samples`), and log the figures."""
    if gen is None or "generation" not in result:
        return
    g = result["generation"]
    g["samples"] = decode_samples(tokenizer, gen.prompts, {"dense": gen.dense, name: torch.tensor(g["tokens"])},
                                  sample_indices(gen.prompts.n, min(k, gen.prompts.n)))
    if log is not None:
        log.info("generation: prefix %.2f [%.2f, %.2f] tokens, agreement %.3f [%.3f, %.3f] over %d prompts x %d "
                 "tokens (%.1f s)", g["gen_prefix"], g["gen_prefix_lo"], g["gen_prefix_hi"], g["gen_agree"],
                 g["gen_agree_lo"], g["gen_agree_hi"], g["gen_prompts"], g["gen_new_tokens"], g["wall_time_s"])


def point_generation(model: nn.Module, masks: Masks, gen: GenerationInputs, *, sequence: bool = False) -> dict:
    """The generation agreement of one point's masks (:func:`apc.perplexity.generation.generation_point`):
    the one-position decode steps masked after a dense prefill of the prompt.  A mask of ``sequence`` scope is
    chosen from the prompt itself: it is given the prompt's positions and runs from the prefill on (route
    ``prefill``).  Returns the ``gen_*`` columns, the per-prompt ``prefix`` and ``agree`` and the ``tokens``."""
    route, prefilled = "cached", gen.prefilled
    if sequence:
        masks, route, prefilled = replace(masks, prompt=gen.prompts.dense_positions), "prefill", None
    res = generation_point(model, gen.prompts, gen.dense, lambda: install_interventions(
        model, masks, skip_first_position=False), route=route, prefilled=prefilled)
    return {**columns(res), "prefix": res["prefix"].tolist(), "agree": res["agree"].tolist(),
            "tokens": res["tokens"].tolist(), "route": route, "wall_time_s": res["wall_time_s"]}


def score_point(model: nn.Module, windows: torch.Tensor, line: str | LineSpec, share: float, *, bos: bool,
                projections, thresholds: dict, predictor_share: dict | None = None, seed: int = 0,
                batch_sizes=(), dense: dict | None = None, scoring: dict | None = None,
                generation: GenerationInputs | None = None, **arrays) -> dict:
    """Perplexity of ``windows: (n, seq_len)`` masked by ``line`` at kept share ``share``.

    ``arrays`` (:func:`line_masks`): ``keep_thresholds: {proj: [T per layer]}`` (threshold-self; teal,
    wina: ``down_in``), ``gate_thresholds: {"down_in": [T per layer]}`` (cats), ``input_thresholds:
    [T_in per layer]`` (teal, wina), ``input_scale``/``mid_scale`` (wina: ``[(d_model,)]``/``[(d_ff,)]``
    per layer), ``rotations`` (larosa: ``[(d_model, d_model)]`` per layer), ``prompt`` (griffin: dense
    positions per window), ``centroids: {proj: (L, K, W) bool}`` (oracle, predicted; ``assign_weights``
    as in :class:`Masks` for a weighted cell's oracle), ``predictors: {proj: [per layer]}`` with
    ``predictor_share: {proj: FLOPs share}`` (predicted, neuron).  Returns :func:`score`'s dict (with
    ``detail``) plus ``line, family, mode, share, kept_share, product_shares`` (``{gate, up, down:
    [share per layer]}``), ``ffn_flops_share``, ``predictor_flops_share``, ``rotation_flops_share``,
    ``compute_share`` and, for griffin, ``dense`` (dense on the same tokens; pass a previous point's
    ``dense`` of the same windows to reuse it) and ``score_from``.  ``scoring``: :func:`score`'s
    ``block_tokens``, ``reference`` (the dense reference of every token, for the KL) and ``check_top_k``.
    ``generation``: the point also carries its generation agreement (``generation``: :func:`point_generation`).
    A line of ``model`` compute scope (:meth:`apc.lines.Line.compute_scope`) also carries ``compute_scope``,
    ``ffn_compute_share`` (the FFN's share as above), ``attn_shares`` (``{"qkv", "o"}``: mean kept share of each
    attention input) and ``attn_kept`` (per layer), its ``compute_share`` being over every linear layer.
    """
    spec = line if isinstance(line, LineSpec) else parse(line)
    impl = spec.impl
    projections = list(projections)
    masks = line_masks(spec, share, projections=projections, thresholds=thresholds, seed=seed, **arrays)
    score_from = int(masks.prompt) if impl.scope == "sequence" and masks.prompt else 1
    scoring = dict(scoring or {})
    res = score(model, windows, masks, bos=bos, detail=True, batch_sizes=tuple(batch_sizes), score_from=score_from,
                **scoring)
    kept = sum(res["kept"][q] for q in projections) / len(projections)
    n_layers = len(next(iter(res["layer_kept"].values())))
    shares = product_shares(impl.decided_by, res["layer_kept"], n_layers, res.get("input_kept"))
    weights = product_weights(model)
    flops = ffn_share(shares, weights)
    rot = float(impl.overhead_share(spec, model, masks))
    pshare = float(sum((predictor_share or {}).get(q, 0.0) for q in projections))
    out = {**res, "line": spec.line, "family": spec.family, "mode": spec.mode, "share": float(share),
           "kept_share": kept, "product_shares": shares, "ffn_flops_share": flops, "predictor_flops_share": pshare,
           "rotation_flops_share": rot, "compute_share": flops + pshare + rot,
           "deployable": bool(impl.is_deployable(spec))}
    if impl.compute_scope(spec) == "model":  # the compute share over every linear layer (the attention's too)
        from apc.perplexity.attention_masks import attention_weights

        attn = res.get("attn_kept") or {}
        out.update(compute_scope="model", ffn_compute_share=out["compute_share"],
                   attn_shares={k: float(sum(v) / len(v)) for k, v in attn.items()},
                   compute_share=model_share(out["compute_share"], attn, weights, attention_weights(model)))
    if generation is not None:
        out["generation"] = point_generation(model, masks, generation, sequence=impl.scope == "sequence")
    if score_from > 1:
        if dense is None or dense.get("tokens") != res["tokens"]:
            dense = score(model, windows, "dense", bos=bos, score_from=score_from,
                          **({"block_tokens": scoring["block_tokens"]} if "block_tokens" in scoring else {}))
        out.update(score_from=score_from, dense={k: dense[k] for k in (
            "ppl", "ppl_lo", "ppl_hi", "nll", "tokens", "windows", "window_nll_sum", "window_tokens", "token_nll",
            "block_tokens", "units")})
    return out
