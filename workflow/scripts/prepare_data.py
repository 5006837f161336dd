from apc.common.atomic import write_json, write_npy
from apc.extraction.corpus import load_split_articles, make_windows
from apc.extraction.model import load_tokenizer
from apc.common.rulekit import start

log = start(snakemake, "prepare_data")
data = snakemake.params.data
tok = load_tokenizer(snakemake.input[0])
articles = load_split_articles(data)
for split, npy, meta_path in zip(["train", "test"], snakemake.output.tokens, snakemake.output.meta):
    budget = data[f"{split}_tokens"]
    windows, meta = make_windows(articles[split], tok, data["seq_len"], budget)
    meta.update(split=split, source=data["source"], n_articles_in_split=len(articles[split]))
    write_npy(npy, windows)
    write_json(meta_path, meta)
    log.info("%s: %d windows of %d tokens from %d of %d articles", split, meta["n_windows"],
             data["seq_len"], len(meta["articles"]), len(articles[split]))
