"""``griffin``: GRIFFIN (hdong920/GRIFFIN): per sequence the prompt runs dense; neuron i is scored by the l2 norm
over the prompt of its ``down_in`` activation after each position's vector is normalised, and the top share is
kept for every later token of that sequence (one mask per sequence).  Only the tokens after the prompt are
scored, so its points carry dense on the same tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

from apc.lines.base import Line
from apc.lines.registry import register_line

if TYPE_CHECKING:
    import torch


def griffin_keep(x: torch.Tensor, prompt: int, k: int, start: int = 0) -> torch.Tensor:
    """GRIFFIN's mask of ``x: (..., seq, W)``: all True on the first ``prompt`` positions; after them, per
    sequence, the ``k`` neurons with the largest l2 norm over positions ``start..prompt-1`` of each
    position's activation vector divided by its own l2 norm (one mask for every later position)."""
    import torch

    from apc.clustering.common import top_n_mask

    if x.shape[-2] <= prompt:
        raise ValueError(f"mode 'griffin': a sequence of {x.shape[-2]} positions leaves none after a prompt of {prompt}")
    a = x[..., start:prompt, :].float()
    a = a / a.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    score = a.norm(dim=-2)  # (..., W)
    mask = top_n_mask(score.reshape(-1, score.shape[-1]), k).view(score.shape)
    keep = torch.ones(x.shape, dtype=torch.bool, device=x.device)
    keep[..., prompt:, :] = mask.unsqueeze(-2)
    return keep


@register_line
class Griffin(Line):
    family = "griffin"
    pattern = r"griffin"
    mode = "griffin"
    decided_by = "before"
    scope = "sequence"
    gated = True
    order = 50
    style = ("-", "X", "#8c564b")
    config = {"prompt": None}
    config_schema = {"prompt": {"anyOf": [{"type": "integer", "minimum": 2}, {"type": "null"}],
                                "description": "dense prompt positions per window (null: a quarter); only later "
                                               "tokens are scored"}}

    def label(self, spec):
        return "GRIFFIN (per-sequence mask from the dense prompt)"

    def check(self, settings, config):
        from apc.common.errors import ConfigError

        prompt, seq_len = settings.get("prompt"), int(config["data"]["seq_len"])
        if prompt is not None and not 2 <= prompt < seq_len:
            raise ConfigError(f"config key 'frontier.lines.griffin.prompt': {prompt} positions leave no token to "
                              f"score in a window of data.seq_len = {seq_len}; use 2 <= prompt < {seq_len}")

    def arrays(self, spec, share, *, projections, calibration, model, windows, settings, inputs, j=0):
        return {"prompt": int(settings.get("prompt") or windows.shape[1] // 4)}

    def share_arrays(self, spec, share, *, projections):
        return {"keep_share": share}

    def prepare(self, masks, layers, width, model):
        from apc.clustering.common import density_to_count
        from apc.lines._checks import check_share

        k = density_to_count(check_share(masks.keep_share, "keep_share", masks.mode), width["down_in"])
        prompt = int(masks.prompt) if masks.prompt is not None else 0
        return {"k": k, "prompt": prompt}

    def check_prompt(self, state, skip_first: bool) -> None:
        if state["prompt"] < 1 + int(skip_first):
            raise ValueError(f"mode 'griffin' needs a prompt of at least {1 + int(skip_first)} positions, "
                             f"got {state['prompt'] or None}")

    def dense_positions(self, state):
        return state["prompt"]

    def sequence_keep(self, state, x, start, layer=0):
        """The whole sequence: :func:`griffin_keep`.  A call of the prompt alone (a prefill) runs dense and keeps
        the mask it chooses for the later one-position calls of layer ``layer`` (KV-cache decoding)."""
        import torch

        prompt, seq = state["prompt"], x.shape[-2]
        chosen = state.setdefault("chosen", {})
        if seq == prompt:
            pad = torch.zeros((*x.shape[:-2], 1, x.shape[-1]), dtype=x.dtype, device=x.device)
            chosen[layer] = griffin_keep(torch.cat([x, pad], dim=-2), prompt, state["k"], start=start)[..., -1:, :]
            return torch.ones(x.shape, dtype=torch.bool, device=x.device)
        if seq == 1 and layer in chosen:
            return chosen[layer].expand(x.shape)
        return griffin_keep(x, prompt, state["k"], start=start)

    def rule(self, state, layer, proj, taps, *, fused):
        from apc.lines.base import MaskRule

        rule = MaskRule()
        rule.k_neuron = state["k"]
        return rule
