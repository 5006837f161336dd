"""Calibration of the training-free lines on train FFN inputs: where each lives now (:mod:`apc.lines`).

The generic helpers (thresholds for a kept share, TEAL's thresholds and block split, greedy allocations, the
error curves) are in :mod:`apc.lines._calibrate`; each method's own calibration is in its line's module."""

from apc.lines._calibrate import (LayerMLP, block_allocation, error_curves, greedy_allocation,  # noqa: F401
                                  layer_mlps, sample_train_inputs, share_grid, share_threshold, teal_thresholds)
from apc.lines.cats import cats_thresholds  # noqa: F401
from apc.lines.larosa import pca_rotations  # noqa: F401
from apc.lines.wina import wina_scales  # noqa: F401
