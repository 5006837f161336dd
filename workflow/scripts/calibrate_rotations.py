from pathlib import Path

import numpy as np
import torch

from apc.common.atomic import read_json, write_npy
from apc.rulekit import start
from apc.perplexity.calibrate import pca_rotations, sample_train_inputs

log = start(snakemake, "calibrate_rotations")
p = snakemake.params
n_layers = int(read_json(snakemake.input.model)["n_layers"])
samples = sample_train_inputs(Path(snakemake.input.ffn).parent, n_layers, p.calibration_tokens, p.seed,
                              device="cpu", dtype=torch.float32)
rot = np.stack([q.numpy() for q in pca_rotations(samples)])
log.info("LaRoSA rotations from %d train FFN inputs per layer: shape %s", len(samples[0]), rot.shape)
write_npy(snakemake.output[0], rot)
