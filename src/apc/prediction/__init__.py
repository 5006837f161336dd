"""Predict, from the FFN input, which centroid (or which neurons) a token will use.

Models in :mod:`.models`, fitting in :mod:`.fit`, test metrics in :mod:`.evaluate`,
files in :mod:`.io`, per-layer drivers over the stores in :mod:`.cell`.
"""

from .cell import cell_centroids, layer_data, stored_layers, train_cluster_cell, train_neuron_cell
from .evaluate import centroid_union, evaluate_cluster_predictor, evaluate_neuron_predictor, mask_sums, predictor_cost
from .fit import FIT_DEFAULTS, fit_cluster_predictor, fit_neuron_predictor
from .io import load_predictors, predictor_paths, save_predictors
from .models import (CLUSTER_KINDS, KINDS, ClusterPredictor, NeuronPredictor, build_predictor, ffn_flops,
                     fold_standardization,
                     matched_rank, neuron_ranks)

__all__ = [
    "CLUSTER_KINDS", "KINDS", "FIT_DEFAULTS", "ClusterPredictor", "NeuronPredictor", "build_predictor",
    "cell_centroids", "centroid_union", "evaluate_cluster_predictor", "evaluate_neuron_predictor", "ffn_flops",
    "fit_cluster_predictor", "fit_neuron_predictor", "fold_standardization", "layer_data", "load_predictors", "mask_sums",
    "matched_rank", "neuron_ranks", "predictor_cost", "predictor_paths", "save_predictors", "stored_layers",
    "train_cluster_cell", "train_neuron_cell",
]
