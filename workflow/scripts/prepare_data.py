from apc.common.atomic import write_json, write_npy
from apc.rulekit import start
from apc.extraction.corpus import load_split, make_windows
from apc.extraction.model import load_tokenizer

log = start(snakemake, "prepare_data")
split = snakemake.wildcards.split
data = snakemake.params.data
tok = load_tokenizer(snakemake.input.model)
articles = load_split(data, split)
windows, meta = make_windows(articles, tok, data["seq_len"], data[f"{split}_tokens"], split=split)
meta.update(split=split, source=data["source"], n_articles_in_split=len(articles))
write_npy(snakemake.output.tokens, windows)
write_json(snakemake.output.meta, meta)
log.info("%s: %d windows of %d tokens from %d of %d articles", split, meta["n_windows"],
         data["seq_len"], len(meta["articles"]), len(articles))
