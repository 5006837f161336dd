# Stage 3: each clustering cell scored on train and held-out test (apc.evaluation.evaluate).


rule evaluate:
    input:
        unpack(lambda wc: norms_input(wc.method)),
        centroids=L.centroids(W),
        patterns=[L.patterns(s) for s in C["eval"]["splits"]],
    output:
        L.eval_table(W),
    params:
        eval=C["eval"],
        splits=C["eval"]["splits"],
        device=C["device"],
    threads: 1
    log:
        L.log("evaluate", W),
    resources:
        **per_cell(evaluate_resources),
    benchmark:
        L.benchmark("evaluate", W)
    script:
        "../scripts/evaluate.py"
