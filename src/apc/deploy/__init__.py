"""Deployable masked FFN kernels, their roofline, and measured time shares.

* :mod:`apc.deploy.ffn`: dense, per-token, cluster-grouped and CATS masked gated FFNs (Triton on
  CUDA, a torch fallback elsewhere);
* :mod:`apc.deploy.roofline`: the physical time bound of a masked FFN and the time-share lookup in
  a benchmark table;
* :mod:`apc.deploy.forward`: a context manager that runs a model's MLPs through the grouped kernel.
"""

from apc.deploy.ffn import (KERNELS, GroupIndex, cats_ffn, cats_mask, column_major, dense_ffn, group_index,
                            grouped_ffn, masked_dense_ffn, per_token_ffn)

__all__ = ["KERNELS", "GroupIndex", "cats_ffn", "cats_mask", "column_major", "dense_ffn", "group_index",
           "grouped_ffn", "masked_dense_ffn", "per_token_ffn"]
