"""Name -> clustering method, and the common entry point :func:`cluster`.

A method is a function ``fn(patterns, k, *, density, seed, max_iter, device,
chunk_size, **options) -> ClusterResult``.  Decorate it with
``@register("name")`` in a module imported by :mod:`apc.clustering` (or
import your module before calling :func:`cluster`), then name it in the
config.  The names and fixed K live in :mod:`apc.common.methods` (no torch),
which the config check and the sweep read; a built-in method is listed there too.
"""

from __future__ import annotations

import importlib
from typing import Callable, TypeVar

import torch

from apc.common import methods as _names
from apc.common.methods import available_methods, fixed_k, method_spec

__all__ = ["register", "get_method", "available_methods", "fixed_k", "cluster", "method_spec"]

F = TypeVar("F", bound=Callable)
_METHODS: dict[str, Callable] = {}
_BUILTINS = ("apc", "kmeans", "baselines", "product")


def register(name: str, *, fixed_k: int | None = None) -> Callable[[F], F]:
    """Decorator registering a clustering method under ``name``.

    ``fixed_k``: the only K the method takes (the static mask: 1); the sweep then runs it once
    with that K instead of once per configured K.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"method name must be a non-empty string, got {name!r}")

    def deco(fn: F) -> F:
        if name in _METHODS and _METHODS[name] is not fn:
            raise ValueError(f"clustering method {name!r} is already registered")
        _names.declare(name, fixed_k)
        _METHODS[name] = fn
        return fn

    return deco


def _load_builtins() -> None:
    for mod in _BUILTINS:
        importlib.import_module(f"{__package__}.{mod}")


def get_method(name: str) -> Callable:
    """The method registered as ``name``; ``ValueError`` listing the known names otherwise."""
    _load_builtins()
    try:
        return _METHODS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown clustering method {name!r}; known: {', '.join(sorted(_METHODS))}"
        ) from None


def cluster(
    patterns,
    k: int,
    *,
    method: str = "apc",
    density: float,
    seed: int = 42,
    max_iter: int = 50,
    device: str | torch.device = "auto",
    chunk_size: int = 65536,
    **options,
):
    """Run the named clustering ``method`` on ``patterns`` (a :class:`PackedPatterns`).

    Validates ``k`` (1..n), ``density`` (in (0, 1]), ``max_iter``,
    ``chunk_size``, the device and the method name before any work, with a
    ``ValueError`` naming the bad argument.  ``options`` go to the method.
    Returns a :class:`ClusterResult`.
    """
    from .common import check_inputs

    fn = get_method(method)
    _, dev = check_inputs(patterns, k, density, max_iter=max_iter, chunk_size=chunk_size, device=device)
    return fn(patterns, k, density=density, seed=seed, max_iter=max_iter, device=dev, chunk_size=chunk_size, **options)
