# Stages 2-3: one clustering job per sweep cell, then its evaluation on train and held-out test.


rule cluster:
    input:
        f"{OUT}/patterns/train",
    output:
        centroids=f"{OUT}/clusters/{{proj}}/{{scope}}/{{method}}-k{{k}}-s{{seed}}/centroids.npy",
        meta=f"{OUT}/clusters/{{proj}}/{{scope}}/{{method}}-k{{k}}-s{{seed}}/centroids.json",
    params:
        cluster=lambda wc: cluster_settings(wc.method),
        device=C["device"],
    threads: 1
    log:
        f"{OUT}/logs/cluster/{{proj}}-{{scope}}-{{method}}-k{{k}}-s{{seed}}.log",
    script:
        "../scripts/cluster.py"


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
