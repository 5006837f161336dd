"""``larosa``: LaRoSA (alibaba/EfficientAI ``larosa/``): per layer an orthogonal rotation Q, the eigenvectors of
``h^T h`` of train FFN inputs; per token the MLP input becomes ``Q m(Q^T h)`` with ``m`` keeping the top share of
``|Q^T h|``, and the top share of ``|x|`` on ``down_in``.  Its rotation's ``d_model^2`` multiply-adds per token
and layer are counted as an overhead (not folded into the previous layer)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from apc.lines._rules import TopN
from apc.lines.base import Line
from apc.lines.registry import register_line

if TYPE_CHECKING:
    import torch


def rotated_top_k(q: torch.Tensor, k: int):
    """``h -> (Q (top-k of Q^T h), keep)``: per token, the ``k`` largest ``|Q^T h|`` kept.

    ``Q (z masked)`` fed to gate_proj and up_proj gives ``W (Q z) = (W Q) z``: the products of the rotated
    weights ``W Q`` with the sparse rotated input, computed here through the unrotated weights."""

    from apc.clustering.common import top_n_mask

    def keep_in(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = h.float() @ q  # rows: Q^T h
        keep = top_n_mask(z.abs().reshape(-1, z.shape[-1]), k).view(z.shape)
        return (z.masked_fill(~keep, 0) @ q.T).to(h.dtype), keep

    return keep_in


def pca_rotations(samples: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """LaRoSA's rotation per layer: ``(d_model, d_model)`` float32 orthogonal Q whose columns are the
    eigenvectors of ``hᵀh`` of ``samples[l]: (n, d_model)``, by decreasing eigenvalue."""
    import torch

    out = []
    for h in samples:
        x = h.double().cpu()
        vals, vecs = torch.linalg.eigh(x.T @ x)
        out.append(vecs[:, vals.argsort(descending=True)].float())
    return out


def rotation_share(model) -> float:
    """A ``d_model x d_model`` rotation of the MLP input per token, as a share of the gated FFN's multiply-adds
    per token (layer 0's shapes): ``d_model^2 / (gate + up + down)``."""
    from apc.common.projections import mlp_projections

    mods = mlp_projections(model)[0]
    d_model = float(mods["gate"].weight.shape[1])
    return d_model * d_model / float(sum(mods[prod].weight.numel() for prod in ("gate", "up", "down")))


@register_line
class Larosa(Line):
    family = "larosa"
    pattern = r"larosa"
    mode = "larosa"
    decided_by = "input"
    gated = True
    calibrates = True
    order = 40
    style = ("-", "h", "#9467bd")

    def label(self, spec):
        return "LaRoSA (rotated input top-k; rotation counted)"

    def calibrate(self, mlps, samples, shares, settings, *, lines=()):
        import torch

        return {"rotations": torch.stack(pca_rotations([h.float().cpu() for h in samples]))}

    def arrays(self, spec, share, *, projections, calibration, model, windows, settings, inputs, j=0):
        return {"rotations": list(calibration["rotations"])}

    def share_arrays(self, spec, share, *, projections):
        return {"input_share": share, "keep_share": share}

    def prepare(self, masks, layers, width, model):
        from apc.clustering.common import density_to_count
        from apc.lines._checks import check_rotations, check_share

        rot = check_rotations(masks.rotations, len(layers), layers[0].d_model, layers)
        k_in = density_to_count(check_share(masks.input_share, "input_share", masks.mode), layers[0].d_model)
        k = density_to_count(check_share(masks.keep_share, "keep_share", masks.mode), width["down_in"])
        return {"rotations": rot, "k_in": k_in, "k": k}

    def rule(self, state, layer, proj, taps, *, fused):
        return TopN(state["k"])

    def input_mask(self, state, layer):
        return rotated_top_k(state["rotations"][layer], state["k_in"])

    def overhead_share(self, spec, model, masks=None):
        return rotation_share(model)
