from pathlib import Path

from apc.common.atomic import read_json, write_json
from apc.rulekit import check_library_source
from apc.perplexity.batches import batch_entry

check_library_source()  # no torch here: this step only copies one cell out of its batch file
wc = snakemake.wildcards
write_json(snakemake.output[0], batch_entry(read_json(snakemake.input[0]), scope=wc.scope, method=wc.method,
                                            k=int(wc.k), density=float(wc.density), seed=int(wc.seed)))
Path(snakemake.log[0]).write_text(f"{snakemake.output[0]}: cell {dict(wc.items())} of {snakemake.input[0]}\n")
