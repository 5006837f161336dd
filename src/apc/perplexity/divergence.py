"""Divergence of a masked model from dense, per scored token: KL(dense || masked) and top-1 agreement.

The dense model's next-token distributions on the scored tokens are kept once, as a *reference*
(written by the dense perplexity job, read by every masked job):

* ``exact``: the full log-probabilities ``(n_tokens, vocab)`` float32; the KL is exact.
* ``topk``: the dense top-k log-probabilities, their token ids, and one bucket holding the rest of
  the vocabulary, ``(n_tokens, k + 1)``.  The masked distribution is coarsened to the same k + 1
  outcomes and the KL taken between the coarsened pair.  Coarsening can only lower a KL (the
  log-sum inequality), so this is a lower bound of the exact KL; it keeps k + 1 numbers per token
  instead of the vocabulary.

Rows follow the scored tokens in window order (window w's positions 1 .. seq_len-1), so a result
on the first windows reads the first rows.  torch for the per-token math, numpy for the file.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from apc.common.atomic import atomic_path

KINDS = ("exact", "topk")


def reference_rows(logp: torch.Tensor, kind: str = "exact", top_k: int = 64) -> dict[str, torch.Tensor]:
    """The reference rows of dense log-probabilities ``logp: (n, vocab)``.

    Returns ``{"logprobs": (n, vocab) or (n, top_k + 1) float32, "ids": (n, 0) or (n, top_k) int32,
    "top1": (n,) int64}``: for ``topk`` the last column is the log-probability of every other token.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown KL reference {kind!r}; expected one of {', '.join(KINDS)}")
    logp = logp.float()
    top1 = logp.argmax(dim=-1)
    if kind == "exact":
        return {"logprobs": logp, "ids": torch.empty(len(logp), 0, dtype=torch.int32), "top1": top1}
    if not 1 <= top_k < logp.shape[-1]:
        raise ValueError(f"KL top_k must be in [1, vocab), got {top_k} for a vocabulary of {logp.shape[-1]}")
    vals, ids = logp.topk(top_k, dim=-1)
    return {"logprobs": torch.cat([vals, _rest(logp, ids)[:, None]], dim=1), "ids": ids.int(), "top1": top1}


def _rest(logq: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``(n,)`` log of the probability outside ``ids: (n, k)`` (summed directly: no 1 - sum cancellation)."""
    return logq.scatter(1, ids.long(), float("-inf")).logsumexp(dim=-1)


def token_divergence(logq: torch.Tensor, ref: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, ``KL(dense || masked)`` in nats ``(n,)`` float64 and whether the top-1 tokens agree ``(n,)`` bool.

    ``logq: (n, vocab)`` masked log-probabilities; ``ref``: :func:`reference_rows` of the same tokens.
    """
    logp = ref["logprobs"].to(logq.device, torch.float32)
    ids = ref["ids"].to(logq.device)
    if len(logp) != len(logq):
        raise ValueError(f"reference has {len(logp)} rows for {len(logq)} scored tokens")
    agree = logq.argmax(dim=-1) == ref["top1"].to(logq.device)  # the masked top-1 over the whole vocabulary
    if ids.shape[1]:  # top-k reference: coarsen the masked distribution to the same outcomes
        logq = torch.cat([logq.float().gather(1, ids.long()), _rest(logq.float(), ids)[:, None]], dim=1)
    elif logp.shape[1] != logq.shape[1]:
        raise ValueError(f"exact reference of vocabulary {logp.shape[1]}, masked logits of {logq.shape[1]}")
    p = logp.exp()
    terms = torch.where(p > 0, p * (logp - logq.float()), torch.zeros((), device=p.device))
    return terms.sum(dim=-1).double(), agree


def save_reference(path: str | os.PathLike, rows: dict[str, np.ndarray], *, kind: str, seq_len: int) -> None:
    """Write reference ``rows`` (:func:`reference_rows`, concatenated over windows) to ``path`` (.npz), atomically."""
    meta = np.array([KINDS.index(kind), seq_len], dtype=np.int64)
    with atomic_path(path, ".npz") as tmp:
        np.savez(tmp, logprobs=np.asarray(rows["logprobs"], np.float32), ids=np.asarray(rows["ids"], np.int32),
                 top1=np.asarray(rows["top1"], np.int64), meta=meta)


def load_reference(path: str | os.PathLike, n_tokens: int, seq_len: int) -> dict:
    """The first ``n_tokens`` rows of the reference at ``path`` as torch tensors, plus ``kind`` and ``top_k``;
    a clear error when it was scored on other windows or covers fewer tokens."""
    with np.load(path, allow_pickle=False) as z:
        kind, ref_len = KINDS[int(z["meta"][0])], int(z["meta"][1])
        if ref_len != seq_len:
            raise ValueError(f"{path}: dense reference of windows of {ref_len} tokens, scoring windows of {seq_len}")
        if len(z["top1"]) < n_tokens:
            raise ValueError(f"{path}: dense reference covers {len(z['top1'])} scored tokens, {n_tokens} needed "
                             "(score dense on at least as many test tokens)")
        rows = {k: torch.from_numpy(np.ascontiguousarray(z[k][:n_tokens])) for k in ("logprobs", "ids", "top1")}
    return {**rows, "kind": kind, "top_k": int(rows["ids"].shape[1])}


def masked_scoring(path: str | os.PathLike, windows, *, block_tokens: int, kl_top_k: int) -> dict:
    """Scoring options of a masked job against the dense reference at ``path``: ``windows (n, T)`` token ids
    (every position after the first is scored), block-bootstrap unit ``block_tokens``, and with an exact
    reference the error of its top-``kl_top_k`` approximation too."""
    n, seq_len = int(windows.shape[0]), int(windows.shape[1])
    return {"block_tokens": int(block_tokens), "reference": load_reference(path, n * (seq_len - 1), seq_len),
            "check_top_k": int(kl_top_k)}


def reference_label(ref: dict) -> str:
    """``exact`` or ``top{k}`` (a lower bound), as results name the KL they carry."""
    return "exact" if ref["kind"] == "exact" else f"top{ref['top_k']}"
