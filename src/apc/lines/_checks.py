"""Checks of the arrays a line's masks read (a private module of :mod:`apc.lines`, not a line): each
validates one argument against the model once, with one clear message naming it, and puts it on the device
of its layer."""

from __future__ import annotations

import numpy as np
import torch

from apc.clustering.common import density_to_count

__all__ = ["check_density", "check_rotations", "check_share", "check_thresholds", "check_vectors"]


def check_vectors(vectors, n_layers: int, size: int, name: str, mode: str, layers, device_of) -> list[torch.Tensor]:
    """``[(size,) float32 per layer]`` on each layer's device, finite; one clear error otherwise."""
    if vectors is None or len(vectors) != n_layers:
        got = "none" if vectors is None else f"{len(vectors)}"
        raise ValueError(f"mode {mode!r} needs {name}: one vector of {size} per layer ({n_layers}), got {got}")
    out = []
    for l, v in enumerate(vectors):
        t = torch.as_tensor(v, dtype=torch.float32)
        if tuple(t.shape) != (size,) or not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}[{l}] must be {size} finite values, got shape {tuple(t.shape)}")
        out.append(t.to(device_of(layers[l])))
    return out


def check_rotations(rotations, n_layers: int, d_model: int, layers) -> list[torch.Tensor]:
    """``[(d_model, d_model) float32 orthogonal Q per layer]`` on each layer's FFN input device."""
    if rotations is None or len(rotations) != n_layers:
        got = "none" if rotations is None else f"{len(rotations)}"
        raise ValueError(f"mode 'larosa' needs rotations: one ({d_model}, {d_model}) matrix per layer ({n_layers}), got {got}")
    out = []
    for l, q in enumerate(rotations):
        q = torch.as_tensor(q, dtype=torch.float32).cpu()
        if tuple(q.shape) != (d_model, d_model):
            raise ValueError(f"rotations[{l}] must be ({d_model}, {d_model}), got {tuple(q.shape)}")
        err = float((q.T @ q - torch.eye(d_model)).abs().max())
        if err > 1e-3:
            raise ValueError(f"rotations[{l}] is not orthogonal (max |Q^T Q - I| = {err:.2g})")
        out.append(q.to(layers[l].ffn_input_device))
    return out


def check_share(share, name: str, mode: str) -> float:
    """A kept share in (0, 1]; one clear error otherwise."""
    if share is None or not 0.0 < float(share) <= 1.0:
        raise ValueError(f"mode {mode!r} needs {name} in (0, 1], got {share}")
    return float(share)


def check_thresholds(thresholds, projections, n_layers, mode, name="thresholds") -> dict[str, list[float]]:
    """``{proj: [T per layer]}`` as floats, each finite and >= 0; one clear error otherwise."""
    out = {}
    for p in projections:
        if thresholds is None or p not in thresholds:
            raise ValueError(f"mode {mode!r} needs {name} for projection {p!r} (one float per layer)")
        t = [float(v) for v in thresholds[p]]
        if len(t) != n_layers:
            raise ValueError(f"{name}[{p!r}] has {len(t)} values, expected one per layer ({n_layers})")
        if not all(np.isfinite(v) and v >= 0 for v in t):
            raise ValueError(f"{name}[{p!r}] must be finite and >= 0, got {t}")
        out[p] = t
    return out


def check_density(density, projections, width, name) -> dict[str, int]:
    """Per projection, the exact number of ones per token: round(d * width)."""
    out = {}
    for p in projections:
        if density is None or p not in density:
            raise ValueError(f"this mode needs {name} for projection {p!r}")
        d = float(density[p])
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"{name}[{p!r}] must be in [0, 1], got {d}")
        out[p] = int(round(d * width[p])) if name == "random_density" else density_to_count(d, width[p])
    return out
