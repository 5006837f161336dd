# Stage 3: each clustering cell scored on train and held-out test.


rule evaluate:
    input:
        centroids=f"{OUT}/clusters/{{proj}}/{{scope}}/{{method}}-k{{k}}-s{{seed}}/centroids.npy",
        patterns=expand(f"{OUT}/patterns/{{split}}", split=C["eval"]["splits"]),
    output:
        f"{OUT}/eval/{{proj}}/{{scope}}/{{method}}-k{{k}}-s{{seed}}.csv",
    params:
        eval=C["eval"],
        splits=C["eval"]["splits"],
        device=C["device"],
    threads: 1
    log:
        f"{OUT}/logs/evaluate/{{proj}}-{{scope}}-{{method}}-k{{k}}-s{{seed}}.log",
    script:
        "../scripts/evaluate.py"
