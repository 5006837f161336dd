# Stage 4: perplexity on the held-out test split, dense, true sparse and under centroid masks
# (apc.perplexity.protocol); cells are scored in batches (one model load each) and split into one
# file per cell.  The dense job also keeps the dense next-token log-probabilities (the reference),
# from which every masked job measures its KL from dense and top-1 agreement on the same tokens.


rule perplexity_dense:
    input:
        model=L.manifest(),
        tokens=L.tokens("test"),
    output:
        L.ppl_dense(),
        L.ppl_reference(),
    params:
        ppl=ppl_settings(with_modes=False, test_tokens=reference_tokens()),
        device=C["device"],
        dataset=dataset_name(C["data"]),
        mode="dense",
        projections=[],
    threads: 1  # beside the one-thread jobs: a two-thread job waits until both cores are free at once
    priority: 50
    log:
        L.log("perplexity_dense"),
    resources:
        **model_job(reference_tokens()),
    benchmark:
        L.benchmark("perplexity_dense")
    script:
        "../scripts/perplexity.py"


rule perplexity_sparse:
    input:
        model=L.manifest(),
        tokens=L.tokens("test"),
        thresholds=L.thresholds(),
        reference=L.ppl_reference(),
    output:
        L.ppl_sparse("{pset}"),
    params:
        ppl=ppl_settings(with_modes=False),
        device=C["device"],
        dataset=dataset_name(C["data"]),
        mode="sparse",
        projections=lambda wc: pset_projections(wc.pset),
    threads: 1  # beside the one-thread jobs: a two-thread job waits until both cores are free at once
    priority: 50
    log:
        L.log("perplexity_sparse", pset="{pset}"),
    resources:
        **model_job(ppl_tokens()),
    benchmark:
        L.benchmark("perplexity_sparse", pset="{pset}")
    script:
        "../scripts/perplexity.py"


rule perplexity_batch:
    input:
        unpack(ppl_batch_inputs),
        model=L.manifest(),
        tokens=L.tokens("test"),
        thresholds=L.thresholds(),
        reference=L.ppl_reference(),
    output:
        L.ppl_batch("{pset}", "{batch}"),
    params:
        ppl=ppl_settings(with_modes=True),
        device=C["device"],
        dataset=dataset_name(C["data"]),
        mode="batch",
        projections=lambda wc: C["perplexity"]["psets"][wc.pset],
        cells=ppl_batch_cells,
    threads: 1
    priority: 20
    log:
        L.log("perplexity_batch", pset="{pset}", batch="{batch}"),
    resources:
        **per_cell(ppl_batch_resources),
    benchmark:
        L.benchmark("perplexity_batch", pset="{pset}", batch="{batch}")
    script:
        "../scripts/perplexity.py"


rule perplexity_cell:
    # One file per cell, split out of its batch (JSON only: no torch to start).
    input:
        ppl_batch_of_cell,
    output:
        L.ppl_cell("{pset}", W),
    log:
        L.log("perplexity_cell", Cell("{pset}", "{scope}", "{method}", "{k}", "{density}", "{seed}")),
    resources:
        **cpu_job(1024, 5),
    benchmark:
        L.benchmark("perplexity_cell", Cell("{pset}", "{scope}", "{method}", "{k}", "{density}", "{seed}"))
    script:
        "../scripts/split_ppl_batch.py"
