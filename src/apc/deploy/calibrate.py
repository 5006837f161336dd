"""Thresholds of the decode step's sparse FFNs and attention inputs, calibrated on the model's own inputs.

:func:`decode_thresholds` runs one prefill of :class:`apc.deploy.decoder.Decoder` with a hook on every layer and,
per layer and FFN compute share ``c``, keeps the thresholds each kind of sparsity applies at decode time:

* ``input``: ``(t_in, t_h)``, the thresholds on ``|x|`` (the MLP input, gate/up) and ``|h|`` (``down_in``) that
  keep the share ``c`` of each (an input-decided mask, TEAL's);
* ``input_scaled``: the same on ``|x| * ||W col||`` and ``|h| * ||W_down col||`` (WINA's scaled scores);
* ``gate``: ``t`` on ``|silu(gate)|`` keeping the share ``gate_shares[c]`` (a gate-decided mask: the gate runs
  dense, up and down on the kept neurons, CATS's; ``inf`` where that share is 0);
* ``static``: ``(d_ff,)`` bool, the ``c`` most active neurons over the prompt (one mask for every token);

and per ``model_shares`` entry ``c`` the four thresholds of a mask on every projection's input (``t_in``,
``t_h``, ``t_qkv``, ``t_o``: TEAL as published).  ``x[l]``: the last 16 FFN inputs of layer ``l``, for checks.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

__all__ = ["kept_threshold", "decode_thresholds"]

#: values a quantile is taken over at most (sampled beyond)
MAX_VALUES = 1 << 24


def kept_threshold(values: torch.Tensor, share: float) -> float:
    """The threshold ``t`` with ``|values| >= t`` on about the share ``share`` of ``values`` (a quantile over at most
    :data:`MAX_VALUES` values, sampled beyond); ``inf`` at share 0, 0 at share 1."""
    if share <= 0:
        return float("inf")
    v = values.detach().abs().float().flatten()
    if v.numel() > MAX_VALUES:
        v = v[torch.randint(0, v.numel(), (MAX_VALUES,), device=v.device)]
    return float(torch.quantile(v, min(max(1.0 - share, 0.0), 1.0)))


@torch.no_grad()
def decode_thresholds(dec, prompt: torch.Tensor, shares: Sequence[float], gate_shares: Mapping[float, float],
                      model_shares: Sequence[float], scales: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """The thresholds of the module docstring from one prefill of ``prompt: (1, P)`` int64 through ``dec``;
    ``scales[l] = ((d_model,), (d_ff,))``: layer ``l``'s column norms of the stacked gate/up and of down."""
    cal: dict = {"x": {}, "model": {c: [] for c in model_shares}}
    for c in shares:
        cal[c] = {"input": [], "input_scaled": [], "gate": [], "static": []}
    f = dec.cfg["intermediate_size"]

    def hook(i, x, n, o):
        cal["x"][i] = x[-16:].clone()
        g, u = F.linear(x, dec.layers[i]["wgu"]).chunk(2, dim=-1)
        a = F.silu(g)
        h = (a * u).float().abs()
        s_in, s_h = scales[i]
        xs, hs = x.float().abs() * s_in, h * s_h
        act_mean = h.mean(0)
        for c in shares:
            cal[c]["input"].append((kept_threshold(x, c), kept_threshold(h, c)))
            cal[c]["input_scaled"].append((kept_threshold(xs, c), kept_threshold(hs, c)))
            cal[c]["gate"].append(kept_threshold(a, gate_shares[c]))
            keep = torch.zeros(f, dtype=torch.bool, device=x.device)
            keep[act_mean.topk(max(1, int(round(c * f)))).indices] = True
            cal[c]["static"].append(keep)
        for c in model_shares:
            cal["model"][c].append(dict(t_in=kept_threshold(x, c), t_h=kept_threshold(h, c),
                                        t_qkv=kept_threshold(n, c), t_o=kept_threshold(o, c)))

    dec.prefill(prompt, hook=hook)
    return cal
