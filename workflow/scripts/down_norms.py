from apc.common.atomic import read_json, write_npy
from apc.rulekit import start
from apc.extraction.magnitudes import down_column_norms
from apc.extraction.model import load_model

start(snakemake, "down_norms")
model, _ = load_model(read_json(snakemake.input.model), device="cpu")
write_npy(snakemake.output[0], down_column_norms(model))
