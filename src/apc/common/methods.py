"""The names of the clustering methods and how a config names one, without torch.

The methods themselves live in :mod:`apc.clustering` (``@register``); this table holds their
names and fixed K, so the config check and the sweep resolve a method without importing the
clustering engine.  :func:`apc.clustering.registry.register` adds a new method's name here.
"""

from __future__ import annotations

__all__ = ["BUILTIN", "declare", "available_methods", "fixed_k", "method_spec"]

#: The built-in methods of :mod:`apc.clustering`: name -> the only K it takes (None: any K).
BUILTIN: dict[str, int | None] = {
    "apc": None, "apc_balanced": None, "apc_weighted": None, "apc_product": None,
    "kmeans": None, "kmeans_capped": None, "random": None, "static": 1,
}
_NAMES: dict[str, int | None] = dict(BUILTIN)


def declare(name: str, fixed_k: int | None = None) -> None:
    """Add method ``name`` (taking only K ``fixed_k``, or any K when None) to the table;
    ``ValueError`` when the name is known with another fixed K."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"method name must be a non-empty string, got {name!r}")
    k = None if fixed_k is None else int(fixed_k)
    if name in _NAMES and _NAMES[name] != k:
        raise ValueError(f"clustering method {name!r} is already declared with fixed K {_NAMES[name]}, not {k}")
    _NAMES[name] = k


def available_methods() -> tuple[str, ...]:
    """Names of the known methods, sorted."""
    return tuple(sorted(_NAMES))


def fixed_k(name: str) -> int | None:
    """The K that method ``name`` is fixed to, or None when it takes any K."""
    if name not in _NAMES:
        raise ValueError(f"unknown clustering method {name!r}; known: {', '.join(sorted(_NAMES))}")
    return _NAMES[name]


def method_spec(name: str, options: dict | None = None) -> tuple[str, dict]:
    """``(registered method, its options)`` of the config method ``name``.

    ``options`` is the config's ``cluster.options`` table.  An entry there with a
    ``method`` field is a *variant*: a name of its own for a registered method
    with fixed options (``apc_wout: {method: apc_weighted, weighting: output}``),
    so two settings of one method sit side by side as two plain cell names.
    Any other entry holds the options of the registered method of that name.
    ``ValueError`` naming the key when neither resolves to a registered method.
    """
    entry = dict((options or {}).get(name) or {})
    base = entry.pop("method", name)
    if base not in _NAMES:
        where = f"cluster.options.{name}.method" if base != name else "cluster.methods"
        raise ValueError(f"config key '{where}': unknown method {base!r} "
                         f"(registered: {', '.join(sorted(_NAMES))}; a variant names one in its 'method' field)")
    return base, entry
