"""Predictor files: one ``.safetensors`` holding every layer's weights plus a ``.json`` sidecar.

``save_predictors(path, predictors, meta)`` writes ``path`` (suffix
``.safetensors``) with tensors named ``L{layer:02d}.{parameter}`` and
``path.with_suffix('.json')`` holding ``meta`` plus ``format``, ``layers`` and
per-layer ``configs`` (kind and sizes).  Loading builds the modules from the
sidecar and loads the weights strictly; no pickle is involved.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from safetensors.torch import load_file, save_file
from torch import nn

from ..common.atomic import atomic_path, read_json, write_json
from .models import build_predictor

FORMAT = "apc-predictors-v1"


def predictor_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """``(weights path, sidecar path)`` for ``path`` (with or without the ``.safetensors`` suffix)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_name(path.name + ".safetensors")
    return path, path.with_suffix(".json")


def save_predictors(path: str | os.PathLike, predictors: Sequence[nn.Module], meta: dict[str, Any] | None = None) -> dict:
    """Save one predictor per layer (index = layer) atomically; return the sidecar dict."""
    if not predictors:
        raise ValueError("save_predictors needs at least one predictor")
    weights, sidecar = predictor_paths(path)
    tensors = {f"L{l:02d}.{name}": t.detach().cpu().contiguous()
               for l, p in enumerate(predictors) for name, t in p.state_dict().items()}
    with atomic_path(weights, ".safetensors") as tmp:
        save_file(tensors, str(tmp))
    side = {**(meta or {}), "format": FORMAT, "layers": len(predictors),
            "configs": [p.config() for p in predictors]}
    write_json(sidecar, side)
    return side


def load_predictors(path: str | os.PathLike) -> tuple[list[nn.Module], dict[str, Any]]:
    """Load ``(per-layer predictors on the CPU in eval mode, sidecar)``; clear errors for missing or bad files."""
    weights, sidecar = predictor_paths(path)
    meta = read_json(sidecar)
    if meta.get("format") != FORMAT or not isinstance(meta.get("configs"), list):
        raise ValueError(f"{sidecar}: not a predictor sidecar (format {meta.get('format')!r}, expected {FORMAT!r})")
    if not weights.exists():
        raise FileNotFoundError(f"missing file: {weights}")
    tensors = load_file(str(weights))
    out = []
    for l, cfg in enumerate(meta["configs"]):
        model = build_predictor(cfg)
        prefix = f"L{l:02d}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{weights}: layer {l} weights do not match its config {cfg}: {err}") from None
        out.append(model.eval())
    return out, meta
