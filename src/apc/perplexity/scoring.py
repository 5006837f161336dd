"""Perplexity protocol over fixed token windows.

Protocol: the test text is tokenized once and cut into non-overlapping windows
``windows: (n_windows, seq_len)`` int64.  When the tokenizer has a BOS token,
column 0 of every window is BOS and columns 1.. hold text, so every text token
is scored exactly once; without BOS, column 0 is the first text token of the
window and stays unscored (it has no prefix).  In both cases each window
scores its ``seq_len - 1`` tokens at positions 1..seq_len-1, the logits at
position t predicting token t+1 from its in-window prefix only.

    NLL = (sum over all windows and scored tokens of -log p(token | prefix)) / tokens
    PPL = exp(NLL)    (token-weighted over ALL windows, not a mean of window PPLs)

Sums are accumulated in float64; log-probs come from float32 logits.  Any hooks
installed on the model (:mod:`apc.perplexity.masking`) apply during scoring.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from apc.common.progress import progress as _progress


def score_windows(model: nn.Module, windows: torch.Tensor, *, bos: bool, progress: bool = True,
                  batch_size: int = 1, score_from: int = 1) -> dict:
    """Score ``windows: (n_windows, seq_len)`` token ids with ``model(ids).logits``.

    Returns ``{"nll", "ppl", "tokens", "windows", "seq_len", "bos", "window_nll_sum",
    "window_tokens"}``: token-weighted mean NLL (nats), exp(nll), scored tokens =
    n_windows * (seq_len - 1), n_windows, seq_len, bos, and per window (lists, window
    order) the summed NLL and the scored tokens, from which intervals are bootstrapped.
    ``bos=True`` requires the same token id in column 0 of every window.  ``score_from``: the first
    position whose token is scored (1: all; a later one scores the same tokens of every window,
    ``seq_len - score_from`` each, for a method whose first positions are a dense prompt).
    """
    windows = torch.as_tensor(windows)
    if windows.dim() != 2 or windows.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"windows must be a 2-D integer tensor (n_windows, seq_len), "
                         f"got {windows.dtype} {tuple(windows.shape)}")
    n, seq_len = windows.shape
    if n < 1 or seq_len < 2:
        raise ValueError(f"need at least one window of >= 2 tokens, got shape {tuple(windows.shape)}")
    if not 1 <= score_from < seq_len:
        raise ValueError(f"score_from must lie in [1, {seq_len - 1}] (the window's positions), got {score_from}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if bos and not bool((windows[:, 0] == windows[0, 0]).all()):
        raise ValueError("bos=True but column 0 is not the same (BOS) token in every window")
    windows = windows.long()
    device = _input_device(model)

    starts = range(0, n, batch_size)
    it = _progress(starts, total=len(starts), desc="perplexity",
                   unit="window" if batch_size == 1 else f"batch({batch_size})") if progress else starts
    per_window = []
    with torch.inference_mode():
        for s in it:
            ids = windows[s : s + batch_size].to(device)
            logits = _logits(model(ids))
            b = ids.shape[0]
            if logits.dim() != 3 or logits.shape[:2] != (b, seq_len):
                raise ValueError(f"model returned logits of shape {tuple(logits.shape)} for input "
                                 f"{tuple(ids.shape)}; expected ({b}, {seq_len}, vocab)")
            nll = F.cross_entropy(logits[:, score_from - 1:-1].float().reshape(-1, logits.shape[-1]),
                                  ids[:, score_from:].reshape(-1), reduction="none")
            per_window.append(nll.view(b, seq_len - score_from).double().sum(dim=1).cpu())
    sums = torch.cat(per_window)
    tokens = n * (seq_len - score_from)
    nll = float(sums.sum()) / tokens
    return {
        "nll": nll,
        "ppl": math.exp(nll) if nll < 709.0 else float("inf") if nll == nll else float("nan"),
        "tokens": tokens,
        "windows": n,
        "seq_len": seq_len,
        "bos": bool(bos),
        "window_nll_sum": sums.tolist(),
        "window_tokens": [seq_len - score_from] * n,
    }


def _logits(out) -> torch.Tensor:
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def _input_device(model: nn.Module) -> torch.device:
    get_emb = getattr(model, "get_input_embeddings", None)
    emb = get_emb() if callable(get_emb) else None
    if emb is not None and getattr(emb, "weight", None) is not None:
        return emb.weight.device
    return next(model.parameters()).device
