from apc.extraction.model import prepare_model
from apc.rulekit import start

start(snakemake, "prepare_model")
prepare_model(snakemake.params.model, snakemake.output[0])
