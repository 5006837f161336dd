# Stage 4: perplexity on the held-out test split, dense, true sparse and under centroid masks
# (apc.perplexity.protocol).


rule perplexity_dense:
    input:
        model=L.manifest(),
        tokens=L.tokens("test"),
    output:
        L.ppl_dense(),
    params:
        ppl=ppl_settings(with_modes=False),
        device=C["device"],
        dataset=dataset_name(C["data"]),
        mode="dense",
        projections=[],
    threads: C["threads"]
    log:
        L.log("perplexity_dense"),
    resources:
        **model_job(ppl_tokens()),
    benchmark:
        L.benchmark("perplexity_dense")
    script:
        "../scripts/perplexity.py"


rule perplexity_sparse:
    input:
        model=L.manifest(),
        tokens=L.tokens("test"),
        thresholds=L.thresholds(),
    output:
        L.ppl_sparse("{pset}"),
    params:
        ppl=ppl_settings(with_modes=False),
        device=C["device"],
        dataset=dataset_name(C["data"]),
        mode="sparse",
        projections=lambda wc: pset_projections(wc.pset),
    threads: C["threads"]
    log:
        L.log("perplexity_sparse", pset="{pset}"),
    resources:
        **model_job(ppl_tokens()),
    benchmark:
        L.benchmark("perplexity_sparse", pset="{pset}")
    script:
        "../scripts/perplexity.py"


rule perplexity_cell:
    input:
        unpack(ppl_centroid_inputs),
        model=L.manifest(),
        tokens=L.tokens("test"),
        thresholds=L.thresholds(),
    output:
        L.ppl_cell("{pset}", W),
    params:
        ppl=ppl_settings(with_modes=True),
        device=C["device"],
        dataset=dataset_name(C["data"]),
        mode="cell",
        projections=lambda wc: C["perplexity"]["psets"][wc.pset],
    threads: 1
    log:
        L.log("perplexity", Cell("{pset}", "{scope}", "{method}", "{k}", "{density}", "{seed}")),
    resources:
        **model_job(ppl_tokens(), passes=len(C["perplexity"]["modes"])),
    benchmark:
        L.benchmark("perplexity", Cell("{pset}", "{scope}", "{method}", "{k}", "{density}", "{seed}"))
    script:
        "../scripts/perplexity.py"
