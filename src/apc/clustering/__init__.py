"""Clustering of binary activation patterns (torch + numpy only).

Entry point: :func:`cluster` with a registered method name (``apc``,
``apc_balanced``, ``apc_weighted``, ``apc_product``, ``kmeans``,
``kmeans_capped``, ``random``, ``static``).
"""

from .common import ClusterResult, density_to_count, top_n_mask
from .data import PackedPatterns, WeightedPatterns
from ..common.device import resolve_device
from .distance import activation_aware_distance, hamming_distance, nearest, pairwise_distance
from .registry import available_methods, cluster, fixed_k, get_method, method_spec, register
from . import apc as _apc, baselines as _baselines, kmeans as _kmeans  # noqa: F401  (register the built-ins)
from .product import nearest_in_groups, product_masks, product_meta
from .io import load_centroids, save_centroids

__all__ = [
    "ClusterResult",
    "PackedPatterns",
    "WeightedPatterns",
    "activation_aware_distance",
    "available_methods",
    "cluster",
    "density_to_count",
    "fixed_k",
    "get_method",
    "hamming_distance",
    "load_centroids",
    "method_spec",
    "nearest",
    "nearest_in_groups",
    "pairwise_distance",
    "product_masks",
    "product_meta",
    "register",
    "resolve_device",
    "save_centroids",
    "top_n_mask",
]
