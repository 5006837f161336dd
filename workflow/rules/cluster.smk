# Stage 2: one clustering job per sweep cell.


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
