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
installed on the model (:mod:`apc.perplexity.masking`) apply during scoring.  Per-token NLLs are
kept (window order) for the block bootstrap (:mod:`apc.perplexity.intervals`); against a dense
reference (:mod:`apc.perplexity.divergence`) each token also gets its KL from dense and whether its
top-1 token agrees with dense's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from apc.common.progress import progress as _progress
from apc.perplexity.divergence import reference_rows, token_divergence


def score_windows(model: nn.Module, windows: torch.Tensor, *, bos: bool, progress: bool = True,
                  batch_size: int = 1, reference: dict | None = None, keep_reference: tuple[str, int] | None = None,
                  check_top_k: int | None = None) -> dict:
    """Score ``windows: (n_windows, seq_len)`` token ids with ``model(ids).logits``.

    Returns ``{"nll", "ppl", "tokens", "windows", "seq_len", "bos", "window_nll_sum",
    "window_tokens", "token_nll"}``: token-weighted mean NLL (nats), exp(nll), scored tokens =
    n_windows * (seq_len - 1), n_windows, seq_len, bos, per window (lists, window order) the
    summed NLL and the scored tokens, and ``token_nll: (tokens,)`` float64 per scored token.
    ``reference`` (:func:`apc.perplexity.divergence.load_reference` of these tokens) adds
    ``token_kl: (tokens,)`` float64 KL(dense || this model) in nats and ``token_top1: (tokens,)``
    bool agreement with dense's top-1; ``keep_reference=(kind, top_k)`` adds ``reference``, this
    model's :func:`~apc.perplexity.divergence.reference_rows` of every scored token (numpy).
    ``check_top_k`` (with an exact ``reference``) adds ``token_kl_topk``: the same KL through the
    dense top-k plus one bucket (the approximation used where the exact reference is too large).
    ``bos=True`` requires the same token id in column 0 of every window.
    """
    windows = torch.as_tensor(windows)
    if windows.dim() != 2 or windows.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"windows must be a 2-D integer tensor (n_windows, seq_len), "
                         f"got {windows.dtype} {tuple(windows.shape)}")
    n, seq_len = windows.shape
    if n < 1 or seq_len < 2:
        raise ValueError(f"need at least one window of >= 2 tokens, got shape {tuple(windows.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if bos and not bool((windows[:, 0] == windows[0, 0]).all()):
        raise ValueError("bos=True but column 0 is not the same (BOS) token in every window")
    windows = windows.long()
    device = _input_device(model)

    starts = range(0, n, batch_size)
    it = _progress(starts, total=len(starts), desc="perplexity",
                   unit="window" if batch_size == 1 else f"batch({batch_size})") if progress else starts
    per_token, kls, kls_k, agrees, kept = [], [], [], [], {}
    with torch.inference_mode():
        for s in it:
            ids = windows[s : s + batch_size].to(device)
            logits = _logits(model(ids))
            b = ids.shape[0]
            if logits.dim() != 3 or logits.shape[:2] != (b, seq_len):
                raise ValueError(f"model returned logits of shape {tuple(logits.shape)} for input "
                                 f"{tuple(ids.shape)}; expected ({b}, {seq_len}, vocab)")
            logq = F.log_softmax(logits[:, :-1].float().reshape(-1, logits.shape[-1]), dim=-1)
            per_token.append(-logq.gather(1, ids[:, 1:].reshape(-1, 1))[:, 0].double().cpu())
            rows = slice(s * (seq_len - 1), (s + b) * (seq_len - 1))
            if reference is not None:
                kl, agree = token_divergence(logq, {k: reference[k][rows] for k in ("logprobs", "ids", "top1")})
                kls.append(kl.cpu())
                agrees.append(agree.cpu())
                if check_top_k and check_top_k < logq.shape[-1]:
                    exact = reference["logprobs"][rows]
                    kl_k, _ = token_divergence(logq, reference_rows(exact.to(logq.device), "topk", check_top_k))
                    kls_k.append(kl_k.cpu())
            if keep_reference is not None:  # written in place: the exact reference is n_tokens x vocab
                for k, v in reference_rows(logq, *keep_reference).items():
                    v = v.cpu().numpy()
                    kept.setdefault(k, np.empty((n * (seq_len - 1), *v.shape[1:]), v.dtype))[rows] = v
            del logq
    token_nll = torch.cat(per_token)
    sums = token_nll.view(n, seq_len - 1).sum(dim=1)
    tokens = n * (seq_len - 1)
    nll = float(sums.sum()) / tokens
    out = {
        "nll": nll,
        "ppl": math.exp(nll) if nll < 709.0 else float("inf") if nll == nll else float("nan"),
        "tokens": tokens,
        "windows": n,
        "seq_len": seq_len,
        "bos": bool(bos),
        "window_nll_sum": sums.tolist(),
        "window_tokens": [seq_len - 1] * n,
        "token_nll": token_nll.numpy(),
    }
    if reference is not None:
        out.update(token_kl=torch.cat(kls).numpy(), token_top1=torch.cat(agrees).numpy())
        if kls_k:
            out["token_kl_topk"] = torch.cat(kls_k).numpy()
    if keep_reference is not None:
        out["reference"] = kept
    return out


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
