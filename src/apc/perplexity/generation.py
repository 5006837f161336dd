"""Generation agreement: free-running greedy continuations of masked models against dense's.

Teacher-forced figures (KL, top-1) score every position on dense's own prefix; a user sees the model
continue its own output, where one changed token changes everything after it.  This module measures that.

Protocol (``docs/generation.md``):

* **Prompts** (:func:`select_prompts`): the test windows ``windows: (n_windows, seq_len)`` are cut into
  non-overlapping chunks of text tokens, in window order; ``n_prompts`` of them are drawn without
  replacement by ``numpy.random.default_rng(seed)`` and kept in window order.  A prompt holds
  ``prompt_len`` tokens: with a BOS token (``bos=True``, column 0 of every window, as
  :func:`apc.perplexity.protocol.score` has it) the window's BOS followed by ``prompt_len - 1`` text
  tokens, else ``prompt_len`` text tokens.
* **Greedy decoding** (:func:`greedy`): every prompt is continued by ``new_tokens`` argmax tokens, a
  batch of prompts at a time (all prompts have the same length: no padding), with a KV cache (the
  ``cache`` argument of the pinned transformers' models) and only the last position's logits
  (``logits_to_keep=1``).  The end-of-text token does not stop a continuation: every prompt gets
  exactly ``new_tokens`` tokens.
* **Where the masks apply**: the first ``prompt_len - 1`` prompt positions are prefilled dense (their
  KV cache is dense's, as deployed TEAL and GRIFFIN prefill densely); the masking context (``masking``,
  a callable returning a context manager that installs the interventions) is entered after the prefill,
  so every one of the ``new_tokens`` forward steps -- the last prompt token's (which predicts the first
  new token) and each generated token's -- runs masked on a one-position input ``(B, 1, width)``.  The
  masks must therefore not skip position 0 of a call (``skip_first_position=False`` for
  :func:`apc.perplexity.masking.install_interventions`: BOS is in the dense prefill anyway).
* **Masks chosen from the prompt** (a mask built per sequence from the prompt's activations inside one
  forward call, which leaves the prompt positions dense itself; give it ``prompt_len - 1`` dense positions,
  :attr:`Prompts.dense_positions`, so that the same positions run dense as above) cannot choose on a
  one-position step.  ``route`` (:data:`ROUTES`) says how such masks run:

  - ``"cached"`` (the default): the protocol above;
  - ``"prefill"``: the masking context also covers the prefill (so the masks see the prompt and keep it
    dense), then the same cached one-position steps: for masks that keep what they chose on the prefill
    for later one-position calls;
  - ``"recompute"``: no KV cache; every step runs the whole sequence so far (prompt and generated tokens)
    under the masking context and keeps the last position's logits: every position but the mask's own
    dense prompt is masked at every step.  About ``(prompt_len + new_tokens / 2)`` times the cached
    route's FFN work.

* **The dense continuation** (``masking=None``) is generated once and compared with every masked point's
  (:func:`generation_point`); the dense prefill's KV caches (:func:`dense_prefill`) can be kept and copied
  by every cached point, which then runs only its ``new_tokens`` masked steps; :func:`save_prefill` writes them
  once (the workflow's ``generation_dense``) and :func:`load_prefill` reads them in every frontier job.

Per prompt (:func:`agreement`): ``prefix`` = the number of leading new tokens equal to dense's
(``0..new_tokens``) and ``agree`` = the share of the ``new_tokens`` positions whose token equals
dense's at the same position (free-running: after a divergence each continuation goes its own way).
Their means over prompts carry percentile intervals of a seeded bootstrap over prompts
(:func:`apc.perplexity.intervals.mean_interval` with blocks of one prompt; NaN below
:data:`apc.perplexity.intervals.MIN_UNITS` prompts).
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from typing import Callable, ContextManager, Sequence

import numpy as np
import torch
from torch import nn

from apc.perplexity.intervals import LEVEL, N_BOOT, mean_interval
from apc.perplexity.scoring import _input_device, _logits

__all__ = ["ROUTES", "COLUMNS", "Prompts", "select_prompts", "greedy", "Prefill", "dense_prefill", "agreement",
           "columns", "generation_point", "save_prefill", "load_prefill", "sample_indices", "decode_samples", "dense_record", "read_dense"]

#: how masked steps run (module docstring)
ROUTES = ("cached", "prefill", "recompute")
#: the columns :func:`columns` returns, in order
COLUMNS = ("gen_prefix", "gen_prefix_lo", "gen_prefix_hi", "gen_agree", "gen_agree_lo", "gen_agree_hi",
           "gen_prompts", "gen_new_tokens")


@dataclass(frozen=True)
class Prompts:
    """Prompts cut from test windows.

    ``ids: (n, prompt_len)`` int64 token ids; ``window: (n,)`` and ``start: (n,)`` int64: the window
    each came from and the position in it of its first text token; ``bos``: ``ids[:, 0]`` is the
    window's BOS token."""

    ids: torch.Tensor
    window: np.ndarray
    start: np.ndarray
    bos: bool

    @property
    def n(self) -> int:
        return int(self.ids.shape[0])

    @property
    def prompt_len(self) -> int:
        return int(self.ids.shape[1])

    @property
    def dense_positions(self) -> int:
        """Prompt positions that run dense (prefilled before the masks apply): ``prompt_len - 1``."""
        return self.prompt_len - 1


def select_prompts(windows: torch.Tensor, n_prompts: int = 64, prompt_len: int = 16, *, bos: bool,
                   seed: int = 0) -> Prompts:
    """``n_prompts`` prompts of ``prompt_len`` tokens from ``windows: (n_windows, seq_len)`` int64.

    Each window (text from column 1 with ``bos``, else from column 0) is cut into non-overlapping chunks of
    ``prompt_len - 1`` (``bos``: after the window's BOS) or ``prompt_len`` text tokens; ``n_prompts`` chunks
    are drawn without replacement (``numpy.random.default_rng(seed)``) and returned in window order."""
    windows = torch.as_tensor(windows)
    if windows.dim() != 2 or windows.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"generation prompts: windows must be a 2-D integer tensor (n_windows, seq_len), "
                         f"got {windows.dtype} {tuple(windows.shape)}")
    n_windows, seq_len = windows.shape
    if not 2 <= int(prompt_len) < seq_len:
        raise ValueError(f"generation prompts: prompt_len must lie in [2, {seq_len - 1}] (windows of {seq_len} "
                         f"tokens), got {prompt_len}")
    if int(n_prompts) < 1:
        raise ValueError(f"generation prompts: n_prompts must be >= 1, got {n_prompts}")
    if bos and n_windows and not bool((windows[:, 0] == windows[0, 0]).all()):
        raise ValueError("generation prompts: bos=True but column 0 is not the same (BOS) token in every window")
    first = int(bos)
    text = int(prompt_len) - first  # text tokens per prompt
    per_window = (seq_len - first) // text
    available = n_windows * per_window
    if available < n_prompts:
        raise ValueError(f"generation prompts: {n_prompts} prompts of {prompt_len} tokens need more test text than "
                         f"{n_windows} window(s) of {seq_len} tokens hold ({available} prompts of {text} text tokens "
                         f"fit); give more windows, fewer prompts or shorter prompts")
    pick = np.sort(np.random.default_rng(seed).choice(available, size=int(n_prompts), replace=False))
    window, start = pick // per_window, first + (pick % per_window) * text
    rows = windows.long()[torch.from_numpy(window)]
    cols = torch.from_numpy(start)[:, None] + torch.arange(text)
    ids = rows.gather(1, cols)
    if bos:
        ids = torch.cat([rows[:, :1], ids], dim=1)
    return Prompts(ids=ids, window=window.astype(np.int64), start=start.astype(np.int64), bos=bool(bos))


def _last_logits(out) -> torch.Tensor:
    return _logits(out)[:, -1]


def greedy(model: nn.Module, prompts: Prompts | torch.Tensor, new_tokens: int = 32, *,
           masking: Callable[[], ContextManager] | None = None, route: str = "cached",
           batch_size: int = 64, prefilled: "Prefill | None" = None) -> torch.Tensor:
    """Greedy continuations ``(n, new_tokens)`` int64 (CPU) of ``prompts`` (a :class:`Prompts` or ids
    ``(n, prompt_len)``), ``batch_size`` prompts per batch.

    ``masking``: called once per batch; the context manager it returns is entered after the dense prefill
    of the first ``prompt_len - 1`` positions and covers every decode step (None: dense).  ``route``
    (:data:`ROUTES`): ``"prefill"`` enters it before the prefill, ``"recompute"`` uses no KV cache, every
    step a forward of the whole sequence under ``masking`` (module docstring).  ``prefilled``
    (:func:`dense_prefill` of the same prompts and ``batch_size``; the cached route only): the dense prefill's
    KV caches, copied for each batch instead of running the prefill again."""
    ids = prompts.ids if isinstance(prompts, Prompts) else torch.as_tensor(prompts)
    if ids.dim() != 2 or ids.shape[1] < 2:
        raise ValueError(f"greedy generation: prompts must be (n, prompt_len >= 2) token ids, got {tuple(ids.shape)}")
    if route not in ROUTES:
        raise ValueError(f"greedy generation: unknown route {route!r}; expected one of {', '.join(ROUTES)}")
    if int(new_tokens) < 1 or int(batch_size) < 1:
        raise ValueError(f"greedy generation: new_tokens and batch_size must be >= 1, got {new_tokens}, {batch_size}")
    starts = range(0, ids.shape[0], int(batch_size))
    if prefilled is not None and (route != "cached" or (prefilled.n, prefilled.prompt_len, prefilled.batch_size)
                                  != (ids.shape[0], ids.shape[1], int(batch_size))):
        raise ValueError(f"greedy generation: the prefilled caches ({prefilled.n} prompts of {prefilled.prompt_len} "
                         f"tokens in batches of {prefilled.batch_size}) are not the dense prefill of these "
                         f"{ids.shape[0]} prompts of {ids.shape[1]} in batches of {batch_size}, or the route "
                         f"({route}) is not cached")
    device = _input_device(model)
    context = masking or contextlib.nullcontext
    out = []
    with torch.inference_mode():
        for j, s in enumerate(starts):
            batch = ids[s : s + int(batch_size)].long().to(device)
            if route == "recompute":
                gen = _recompute(model, batch, int(new_tokens), context)
            else:
                cache = None if prefilled is None else copy.deepcopy(prefilled.caches[j])
                gen = _cached(model, batch, int(new_tokens), context, prefill=route == "prefill", cache=cache)
            out.append(gen.cpu())
    return torch.cat(out)


@dataclass(frozen=True)
class Prefill:
    """The dense KV caches of the first ``prompt_len - 1`` positions of ``n`` prompts, one per batch of
    ``batch_size`` (:func:`dense_prefill`)."""

    n: int
    prompt_len: int
    batch_size: int
    caches: tuple


def dense_prefill(model: nn.Module, prompts: Prompts, *, batch_size: int = 64) -> Prefill:
    """The dense prefill of ``prompts`` in batches of ``batch_size``: computed once per job, copied by every
    cached point (:func:`greedy`'s ``prefilled``)."""
    device = _input_device(model)
    with torch.inference_mode():
        caches = tuple(model(prompts.ids[s : s + int(batch_size), :-1].long().to(device), use_cache=True,
                             logits_to_keep=1).cache for s in range(0, prompts.n, int(batch_size)))
    return Prefill(prompts.n, prompts.prompt_len, int(batch_size), caches)


def save_prefill(prefill: Prefill, path, prompts: Prompts) -> None:
    """Write ``prefill`` (:func:`dense_prefill` of ``prompts``) to ``path``, atomically (``torch.save`` of
    ``{"n", "prompt_len", "batch_size", "ids": (n, prompt_len) int64, "kv": [[(keys, values) per layer] per
    batch]}``, each ``keys``/``values`` ``(B, kv_heads, prompt_len - 1, head_dim)``)."""
    from apc.common.atomic import atomic_path

    kv = [[(k.cpu(), v.cpu()) for k, v, *_ in cache] for cache in prefill.caches]
    with atomic_path(path, ".pt") as tmp:
        torch.save({"n": prefill.n, "prompt_len": prefill.prompt_len, "batch_size": prefill.batch_size,
                    "ids": prompts.ids.long().cpu(), "kv": kv}, tmp)


def load_prefill(path, prompts: Prompts, model: nn.Module) -> Prefill:
    """The :class:`Prefill` that :func:`save_prefill` wrote to ``path``, on ``model``'s device, as the KV caches
    of ``model``'s config; ``ValueError`` naming the file when it is unreadable or holds other prompts."""
    from pathlib import Path

    from transformers import DynamicCache

    if not Path(path).is_file():
        raise FileNotFoundError(f"missing file: {path} (dense's prefill of the generation prompts); rerun "
                                "generation_dense")
    try:
        rec = torch.load(path, map_location="cpu", weights_only=True)
        n, prompt_len, batch_size, ids, kv = (rec[k] for k in ("n", "prompt_len", "batch_size", "ids", "kv"))
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported as one error
        raise ValueError(f"{path} is not a readable prefill file ({type(err).__name__}: {err}); rerun "
                         "generation_dense") from None
    if not torch.equal(ids, prompts.ids.long().cpu()) or n != prompts.n or len(kv) != -(-n // batch_size):
        raise ValueError(f"{path} holds the prefill of other prompts than the generation file's; rerun "
                         "generation_dense")
    device = _input_device(model)
    caches = tuple(DynamicCache(ddp_cache_data=[(k.to(device), v.to(device)) for k, v in layers],
                                config=model.config) for layers in kv)
    return Prefill(int(n), int(prompt_len), int(batch_size), caches)


def _cached(model: nn.Module, ids: torch.Tensor, new_tokens: int, context, prefill: bool = False,
            cache=None) -> torch.Tensor:
    """KV-cache greedy of one batch ``ids: (B, P)``: prefill of ``ids[:, :-1]`` (dense, or under ``context()``
    with ``prefill``; skipped when ``cache`` holds it), then ``new_tokens`` one-position steps under ``context()``."""
    gen = []
    with contextlib.ExitStack() as masks:
        if prefill:
            masks.enter_context(context())
        if cache is None:
            cache = model(ids[:, :-1], use_cache=True, logits_to_keep=1).cache
        if not prefill:
            masks.enter_context(context())
        step = ids[:, -1:]
        for _ in range(new_tokens):
            out = model(step, cache=cache, use_cache=True, logits_to_keep=1)
            cache = out.cache
            step = _last_logits(out).argmax(dim=-1, keepdim=True)
            gen.append(step)
    return torch.cat(gen, dim=1)


def _recompute(model: nn.Module, ids: torch.Tensor, new_tokens: int, context) -> torch.Tensor:
    """Greedy of one batch ``ids: (B, P)`` without a cache: each step a full forward under ``context()``."""
    seq = ids
    with context():
        for _ in range(new_tokens):
            nxt = _last_logits(model(seq, use_cache=False, logits_to_keep=1)).argmax(dim=-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    return seq[:, ids.shape[1]:]


def _prefix(same: np.ndarray) -> np.ndarray:
    """Leading True count of each row of ``same: (n, N)`` bool -> ``(n,)`` int64."""
    return np.where(same.all(axis=1), same.shape[1], np.argmin(same, axis=1)).astype(np.int64)


def agreement(tokens: torch.Tensor | np.ndarray, dense: torch.Tensor | np.ndarray, *, n_boot: int = N_BOOT,
              level: float = LEVEL, seed: int = 0) -> dict:
    """Agreement of continuations ``tokens: (n, N)`` with dense's ``dense: (n, N)`` of the same prompts.

    Returns ``prefix: (n,)`` int64 (leading tokens equal to dense's), ``agree: (n,)`` float64 (share of
    positions equal to dense's) and :func:`columns`' figures, the intervals from a bootstrap over
    prompts (``n_boot`` resamples, ``seed``; both figures resampled with the same draws)."""
    a, d = np.asarray(tokens), np.asarray(dense)
    if a.ndim != 2 or a.shape != d.shape or a.shape[1] == 0:
        raise ValueError(f"generation agreement: continuations {a.shape} and dense {d.shape} must be the same "
                         f"(n_prompts, new_tokens) shape")
    same = a == d
    prefix, agree = _prefix(same), same.mean(axis=1)
    boot = dict(block=1, n_boot=n_boot, level=level, seed=seed)
    out = {"prefix": prefix, "agree": agree}
    for name, v in (("gen_prefix", prefix), ("gen_agree", agree)):
        lo, hi = mean_interval(v.astype(np.float64), **boot)
        out.update({name: float(v.mean()), f"{name}_lo": lo, f"{name}_hi": hi})
    out.update(gen_prompts=int(a.shape[0]), gen_new_tokens=int(a.shape[1]))
    return out


def columns(result: dict) -> dict:
    """The plain ``{column: float | int}`` of an :func:`agreement` or :func:`generation_point` result
    (:data:`COLUMNS`)."""
    return {k: result[k] for k in COLUMNS}


def generation_point(model: nn.Module, prompts: Prompts, dense: torch.Tensor,
                     masking: Callable[[], ContextManager] | None, *, route: str = "cached", batch_size: int = 64,
                     prefilled: Prefill | None = None, n_boot: int = N_BOOT, level: float = LEVEL,
                     seed: int = 0) -> dict:
    """Greedy continuations of ``prompts`` under ``masking`` (:func:`greedy`) compared with ``dense: (n, N)``,
    dense's continuations of the same prompts (generated once, :func:`greedy` without masking); ``prefilled``
    (:func:`dense_prefill`, the cached route) reuses the dense prefill.

    Returns :func:`agreement`'s dict plus ``tokens: (n, N)`` int64 (the continuations) and ``wall_time_s``
    (the generation's)."""
    dense = torch.as_tensor(dense)
    if dense.dim() != 2 or dense.shape[0] != prompts.n:
        raise ValueError(f"generation point: dense continuations {tuple(dense.shape)} do not match "
                         f"{prompts.n} prompts")
    t0 = time.perf_counter()
    tokens = greedy(model, prompts, dense.shape[1], masking=masking, route=route, batch_size=batch_size,
                    prefilled=prefilled)
    wall = time.perf_counter() - t0
    return {**agreement(tokens, dense, n_boot=n_boot, level=level, seed=seed), "tokens": tokens,
            "wall_time_s": wall}


def sample_indices(n: int, k: int = 3, *, seed: int = 0) -> list[int]:
    """``k`` distinct prompt indices of ``n`` (seeded, ascending): the samples shown side by side."""
    if not 1 <= k <= n:
        raise ValueError(f"generation samples: cannot show {k} of {n} prompts")
    return sorted(int(i) for i in np.random.default_rng(seed).choice(n, size=k, replace=False))


def decode_samples(tokenizer, prompts: Prompts, continuations: dict[str, torch.Tensor | np.ndarray],
                   indices: Sequence[int], *, dense: str = "dense") -> list[dict]:
    """Decoded text of prompts ``indices`` and their continuations, one dict per prompt.

    ``continuations: {name: (n, N) token ids}`` (``dense`` among them).  Each dict holds ``index, window,
    start, prompt`` (text, special tokens dropped) and ``continuations: {name: {"text", "prefix"}}``,
    ``prefix`` being the name's leading tokens equal to dense's."""
    if dense not in continuations:
        raise ValueError(f"generation samples: the continuations hold no {dense!r} entry ({', '.join(continuations)})")
    conts = {k: np.asarray(v) for k, v in continuations.items()}
    ref = conts[dense]
    out = []
    for i in indices:
        row = {"index": int(i), "window": int(prompts.window[i]), "start": int(prompts.start[i]),
               "prompt": tokenizer.decode(prompts.ids[i].tolist(), skip_special_tokens=True), "continuations": {}}
        for name, t in conts.items():
            row["continuations"][name] = {"text": tokenizer.decode(t[i].tolist(), skip_special_tokens=False),
                                          "prefix": int(_prefix(t[i : i + 1] == ref[i : i + 1])[0])}
        out.append(row)
    return out


def dense_record(prompts: Prompts, dense: torch.Tensor, **meta) -> dict:
    """The JSON record of the prompts and dense's continuations ``dense: (n, N)`` (:func:`read_dense` reads it)."""
    return {**meta, "bos": bool(prompts.bos), "ids": prompts.ids.tolist(), "window": prompts.window.tolist(),
            "start": prompts.start.tolist(), "tokens": torch.as_tensor(dense).tolist()}


def read_dense(record: dict) -> tuple[Prompts, torch.Tensor]:
    """``(prompts, dense continuations (n, N) int64)`` of a :func:`dense_record`; ``ValueError`` naming what is
    inconsistent."""
    try:
        ids, tokens = torch.tensor(record["ids"], dtype=torch.int64), torch.tensor(record["tokens"], dtype=torch.int64)
        prompts = Prompts(ids, np.asarray(record["window"], np.int64), np.asarray(record["start"], np.int64),
                          bool(record["bos"]))
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"not a dense generation record ({err})") from None
    if ids.dim() != 2 or tokens.dim() != 2 or tokens.shape[0] != ids.shape[0] or len(prompts.window) != ids.shape[0]:
        raise ValueError(f"a dense generation record of {tuple(ids.shape)} prompts and {tuple(tokens.shape)} "
                         "continuations: the counts differ")
    return prompts, tokens
