# Stage 4: perplexity on the held-out test split, dense, true sparse and under centroid masks.


def ppl_centroid_inputs(wildcards):
    return {
        p: f"{cell_dir(p, wildcards.scope, wildcards.method, wildcards.k, wildcards.seed)}/centroids.npy"
        for p in C["perplexity"]["psets"][wildcards.pset]
    }


rule perplexity_dense:
    input:
        model=f"{OUT}/model/manifest.json",
        tokens=f"{OUT}/tokens/test.npy",
    output:
        f"{OUT}/ppl/dense.json",
    params:
        ppl=ppl_settings(with_modes=False),
        device=C["device"],
        data=C["data"],
        mode="dense",
        projections=[],
    threads: C["threads"]
    log:
        f"{OUT}/logs/perplexity_dense.log",
    script:
        "../scripts/perplexity.py"


rule perplexity_sparse:
    input:
        model=f"{OUT}/model/manifest.json",
        tokens=f"{OUT}/tokens/test.npy",
        thresholds=f"{OUT}/thresholds.json",
    output:
        f"{OUT}/ppl/sparse-{{pset}}.json",
    params:
        ppl=ppl_settings(with_modes=False),
        device=C["device"],
        data=C["data"],
        mode="sparse",
        projections=lambda wc: C["perplexity"]["psets"][wc.pset],
    threads: C["threads"]
    log:
        f"{OUT}/logs/perplexity_sparse_{{pset}}.log",
    script:
        "../scripts/perplexity.py"


rule perplexity_cell:
    input:
        unpack(ppl_centroid_inputs),
        model=f"{OUT}/model/manifest.json",
        tokens=f"{OUT}/tokens/test.npy",
        thresholds=f"{OUT}/thresholds.json",
    output:
        f"{OUT}/ppl/{{pset}}/{{scope}}/{{method}}-k{{k}}-s{{seed}}.json",
    params:
        ppl=ppl_settings(with_modes=True),
        device=C["device"],
        data=C["data"],
        mode="cell",
        projections=lambda wc: C["perplexity"]["psets"][wc.pset],
    threads: 1
    log:
        f"{OUT}/logs/perplexity/{{pset}}-{{scope}}-{{method}}-k{{k}}-s{{seed}}.log",
    script:
        "../scripts/perplexity.py"
